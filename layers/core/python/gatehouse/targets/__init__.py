"""One executor per target kind. Each fetches its credential at run time and never returns it."""
