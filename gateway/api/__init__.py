"""Thin HTTP routes: validate, fetch collaborators from the app state, return JSON or a stream."""
