"""Operations: Prometheus metrics, JSON access logs, health and readiness."""
