"""The browser page served by `ensemble serve --web` (ensemble.io.web): static files, no build step."""
