"""Identity (who you are) and second factors (prove it again), as separate small pieces."""
