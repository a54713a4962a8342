"""Driving Debian's headless Chromium over the DevTools protocol, for the status page test."""
