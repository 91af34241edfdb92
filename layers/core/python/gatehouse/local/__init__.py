"""The embedded stack for a laptop or CI: moto server, provisioning, throwaway Postgres, API stand-in."""
