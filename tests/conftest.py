"""Fixtures and hooks shared by rtnf's tests (pytest loads this file itself: never import it).

Paths, skip markers, the session-config builder and other helpers that tests
import live in :mod:`tests.helpers`.
"""
