# The backend for docker-compose.yml: cutproxy is the "proxy" service on the compose network.
# Mounted as /etc/varnish/backend.vcl, which default.vcl includes.
backend cutproxy {
    .host = "proxy";
    .port = "8080";
    .connect_timeout = 2s;
    .first_byte_timeout = 300s;  # a miss renders upstream: up to PROXY_PROCESS_TIMEOUT
    .between_bytes_timeout = 10s;
}
