"""The HTTP layer: the raw-ASGI hit path, the routes and their handlers,
redirect/JSON/bytes negotiation, response headers, CDN headers and purges, srcset, the
admin API and the demo page. Handlers check, parse, call a service and answer.
"""
