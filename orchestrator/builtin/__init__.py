"""The built-in workflow definitions (TOML files beside this module)."""
