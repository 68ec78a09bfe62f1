//! Integration tests: ai.
