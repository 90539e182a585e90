"""Offline evaluation: labelled multiple-choice data run through every chosen variant by the
live code path (in process or on a running gateway), paired, scored and reported with
intervals."""
