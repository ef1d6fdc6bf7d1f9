vcl 4.1;
# Varnish in front of cutproxy (Varnish 6 and 7). What it does:
#
# - caches the proxy's 302s (and the JSON apps get) for as long as s-maxage/max-age say,
#   which is never longer than the output URL they point at still lives; no grace, no
#   keep: a stale redirect is a broken image;
# - keeps one copy for browsers and one for apps: Accept is folded to json-or-not, and for
#   .auto URLs (the best format by Accept) to the formats it names, so at most one copy per
#   format: AVIF, WebP, or neither (JPEG or PNG);
# - never caches 5xx, 429 or anything marked no-store (the proxy marks each of those);
# - `BAN /` with `Surrogate-Key: img-<id>` from a purger drops every answer about the
#   image: what the proxy sends with PROXY_CDN_PURGE_URL=http://<varnish>/;
# - answers 403 for /metrics and the admin API: use the proxy's own port for those.
#
# The backend below is the proxy as deploy/docker-compose.yml names it; elsewhere set
# .host/.port to where `cutproxy serve` listens (e.g. "127.0.0.1" and "8080").

backend proxy {
    .host = "proxy";
    .port = "8080";
    .connect_timeout = 2s;
    # A miss waits for the upstream: allow as long as the proxy does.
    .first_byte_timeout = 360s;
    .between_bytes_timeout = 10s;
    .probe = {
        .url = "/health/live";
        .interval = 5s;
        .timeout = 2s;
        .window = 5;
        .threshold = 3;
    }
}

# Who may purge: this host and the proxy. "(name)" is skipped when the name does not resolve.
acl purgers {
    "localhost";
    ("proxy");
}

sub vcl_recv {
    # BAN with "Surrogate-Key: img-<id> ...": drop every object tagged with any of the keys.
    if (req.method == "BAN") {
        if (client.ip !~ purgers) {
            return (synth(403, "Forbidden"));
        }
        if (req.http.Surrogate-Key !~ "^ *[A-Za-z0-9_.-]+( +[A-Za-z0-9_.-]+)* *$") {
            return (synth(400, "Surrogate-Key: one or more keys like img-shoe"));
        }
        # Whole keys only (img-shoe must not ban img-shoe-2), dots taken literally.
        ban("obj.http.Surrogate-Key ~ (^|\s)(" +
            regsuball(regsuball(regsuball(req.http.Surrogate-Key, "^ +| +$", ""), "\.", "\\."),
                " +", "|") +
            ")(\s|$)");
        return (synth(200, "Banned"));
    }
    # Metrics and the admin API are for the operator's network, not for the public.
    if (req.url ~ "^/(metrics|images|admin)(/|\?|$)") {
        return (synth(403, "Forbidden"));
    }
    if (req.url ~ "^/health") {
        return (pass);
    }
    if (req.method != "GET" && req.method != "HEAD") {
        return (pass);
    }
    if (req.url ~ "^/(img|srcset)/") {
        # The proxy varies on Accept as json-or-not, and for .auto URLs by the image formats
        # it names (AVIF, WebP): fold it to exactly that, so browsers share one copy each.
        if (req.http.Accept ~ "(?i)application/json" && req.http.Accept !~ "(?i)image/") {
            set req.http.Accept = "application/json";
        } elsif (req.url ~ "^/img/[^?]*\.auto(\?|$)" && req.http.Accept ~ "(?i)image/(avif|webp)") {
            if (req.http.Accept ~ "(?i)image/avif" && req.http.Accept ~ "(?i)image/webp") {
                set req.http.Accept = "image/avif,image/webp";
            } elsif (req.http.Accept ~ "(?i)image/avif") {
                set req.http.Accept = "image/avif";
            } else {
                set req.http.Accept = "image/webp";
            }
        } else {
            unset req.http.Accept;
        }
        # Variants are public: cookies and credentials would only split the cache.
        unset req.http.Cookie;
        if (req.url ~ "^/img/") {
            unset req.http.Authorization;
        } elsif (req.http.Authorization) {
            return (pass);  # an admin's signed srcset markup is for that admin alone
        }
        return (hash);
    }
    # Health, the demo page, the engine's files: the built-in rules.
}

sub vcl_backend_response {
    if (bereq.url ~ "^/(img|srcset)/") {
        set beresp.grace = 0s;
        set beresp.keep = 0s;
        if (beresp.status >= 500 || beresp.status == 429) {
            set beresp.ttl = 0s;
            set beresp.uncacheable = true;
            return (deliver);
        }
    }
    # The built-in VCL follows: s-maxage/max-age set the TTL; no-store (in Surrogate-Control
    # or Cache-Control) makes the object uncacheable.
}

sub vcl_deliver {
    # Surrogate keys and CDN lifetimes are for this cache (and bans), not for browsers.
    unset resp.http.Surrogate-Key;
    unset resp.http.Cache-Tag;
    unset resp.http.Surrogate-Control;
    unset resp.http.CDN-Cache-Control;
    if (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } else {
        set resp.http.X-Cache = "MISS";
    }
}
