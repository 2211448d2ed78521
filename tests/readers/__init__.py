"""Tests of the built-in readers."""
