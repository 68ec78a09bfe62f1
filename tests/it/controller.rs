//! Integration tests: controller.
