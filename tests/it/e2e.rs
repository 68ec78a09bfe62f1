//! Integration tests: the whole overlay end to end (real controller, proxies and peers).
