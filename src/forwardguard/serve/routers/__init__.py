"""One router per resource: immunize, lookup, patterns, models, and health with metrics."""
