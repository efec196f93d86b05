"""HTTP edge: request handlers by area. Errors become responses only here."""
