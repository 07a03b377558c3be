"""Helpers the tests import (`from helpers.cli import run_cli`); fixtures stay in conftest.py."""
