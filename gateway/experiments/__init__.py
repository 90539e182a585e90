"""Experiments: a route's variants compared on live traffic (and beside offline runs), the
decision a team acts on, promotion, and the reports that show it."""
