//! Integration tests: peer.
