//! Integration tests: proxy.
