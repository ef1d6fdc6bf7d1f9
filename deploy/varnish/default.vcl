vcl 4.1;

# Varnish in front of cutproxy. Redirects (302) are cached for as long as the proxy's
# Cache-Control says: never longer than the upstream output URL lives.

backend proxy {
    .host = "proxy";
    .port = "8080";
    .connect_timeout = 2s;
    # A miss waits for the upstream: allow as long as the proxy does.
    .first_byte_timeout = 360s;
    .probe = {
        .url = "/health/live";
        .interval = 5s;
        .timeout = 2s;
        .window = 5;
        .threshold = 3;
    }
}

sub vcl_recv {
    # Metrics and the admin API are for the operator's network, not for the public.
    if (req.url ~ "^/(metrics|images)(/|\?|$)") {
        return (synth(403, "Forbidden"));
    }
    if (req.url ~ "^/health") {
        return (pass);
    }
    if (req.method != "GET" && req.method != "HEAD") {
        return (pass);
    }
    if (req.url ~ "^/img/") {
        # Variants are public: cookies and credentials would only split the cache.
        unset req.http.Cookie;
        unset req.http.Authorization;
        return (hash);
    }
    return (pass);
}

sub vcl_backend_response {
    # 5xx and 429 carry no-store already; keep errors from being cached in any case.
    if (beresp.status >= 500) {
        set beresp.uncacheable = true;
        set beresp.ttl = 0s;
        return (deliver);
    }
    # Never serve a redirect past its life: no grace for 302s.
    if (beresp.status == 302) {
        set beresp.grace = 0s;
    }
    return (deliver);
}

sub vcl_deliver {
    if (obj.hits > 0) {
        set resp.http.X-Cache = "HIT";
    } else {
        set resp.http.X-Cache = "MISS";
    }
}
