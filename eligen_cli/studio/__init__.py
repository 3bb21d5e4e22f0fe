"""`eligen studio`: a local web app on the same engine as the CLI (a JSON API and one plain-JavaScript page)."""
