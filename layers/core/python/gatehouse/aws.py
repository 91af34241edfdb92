"""boto3 sessions for the functions, with botocore's model loading made cheaper for a cold start.

Creating a function's first clients (DynamoDB, Secrets Manager, S3) costs a cold start about
120 ms on the benchmark's machine, about 30 ms of it in two things botocore's loader does that the
functions gain nothing from:

- its JSON decoder builds every object of the models (endpoints.json alone is 1.2 MB) as an
  `OrderedDict` through a Python hook, where a plain `dict` keeps the same order (Python 3.7+) and
  is built in C: up to 2x faster (endpoints.json) and 1.4x on a service model;
- on the first client of each kind of model it walks the data folder, one `stat` for each of the
  ~400 services and each of their API versions (about 3,000 calls), only to tell whether the
  service asked for exists; a directory listing tells the same.

Both keep botocore's data and its search path (AWS_DATA_PATH, ~/.aws/models, boto3's extras), and
its errors: a missing service still raises UnknownServiceError, a missing file DataNotFoundError.
"""

from __future__ import annotations

import gzip
import json
import os
from typing import Any

import boto3
import botocore.session
from botocore.exceptions import DataNotFoundError, UnknownServiceError
from botocore.loaders import JSONFileLoader, Loader, instance_cache

# The two forms botocore ships its models in, in the order it tries them.
_OPENERS = ((".json", open), (".json.gz", gzip.open))


class PlainJSONFileLoader(JSONFileLoader):
    """botocore's JSON file loader, decoding into plain dicts."""

    def load_file(self, file_path: str) -> Any:
        for ext, opener in _OPENERS:
            path = file_path + ext
            if os.path.isfile(path):
                with opener(path, "rb") as fp:
                    return json.loads(fp.read())
        return None


class ListingLoader(Loader):
    """botocore's loader, which knows a service from its folder in a search path."""

    @instance_cache
    def list_available_services(self, type_name: str) -> list[str]:
        # Every service folder, whether or not it has this type of file: which ones do is
        # settled per service, below, when one is asked for.
        services: set[str] = set()
        for path in self.search_paths:
            if os.path.isdir(path):
                with os.scandir(path) as entries:
                    services.update(entry.name for entry in entries if entry.is_dir())
        return sorted(services)

    @instance_cache
    def determine_latest_version(self, service_name: str, type_name: str) -> str:
        # A service with no file of this type (no boto3 resources, no waiters) is unknown for
        # it, as botocore's full listing would have said: boto3 turns that into its own errors.
        try:
            return str(max(self.list_api_versions(service_name, type_name)))
        except DataNotFoundError as exc:
            known = ", ".join(self.list_available_services(type_name))
            raise UnknownServiceError(service_name=service_name, known_service_names=known) from exc


def session(**kwargs: Any) -> boto3.session.Session:
    """A boto3 Session (keyword arguments as boto3's) whose clients load their models as above."""
    core = botocore.session.get_session()
    # botocore's own create_loader reads the same variable the same way.
    data_path = core.get_config_variable("data_path")
    extra = None
    if data_path:
        extra = [os.path.expanduser(os.path.expandvars(p)) for p in data_path.split(os.pathsep)]
    loader = ListingLoader(extra_search_paths=extra, file_loader=PlainJSONFileLoader())
    core.register_component("data_loader", loader)
    return boto3.session.Session(botocore_session=core, **kwargs)
