"""Integrations with training frameworks (each imported on its own, optional dependency).

    >>> from gradwatch.integrations.lightning import GradwatchCallback
"""
