"""The one store layout: where every stage reads and writes under ``ATTUNE_STORE``.

::

    <store>/                          ATTUNE_STORE (local dir or s3://bucket/prefix)
      histories/                      servicing history (attune generate, or an export)
      features/latest/                ranking dataset (attune preprocess), read by attune tune
      features/<spec hash>/<id>/      online feature snapshots (attune features materialize)
      events_online/                  events posted to /v1/events (durable log)
      registry/                       model versions and aliases (attune tune, attune registry)
      decisions/                      served decision log (the Serve app, batch ranking)
      outcomes/                       the demo's A/B outcomes (attune experiment analyze)
      rewards/                        reward rows per decision and shown position (attune outcomes)
      monitoring/drift/<version>/     drift reports (attune monitor drift)
      redis/                          data of the local redis-server (local runs only)

Every CLI command, job, Serve config and KubeRay manifest takes its defaults from
here (``tests/unit/test_layout.py`` fails when two of them disagree), so
``--registry``/``--histories``/``--features``/``--decisions`` are only needed to
point somewhere else.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from attune import storage

#: Sub-paths of the store, by the thing they hold.
HISTORIES = "histories"
FEATURES = "features/latest"
ONLINE = ""  # materialize writes features/<spec hash>/ and events_online/ under the root
REGISTRY = "registry"
DECISIONS = "decisions"
OUTCOMES = "outcomes"
REWARDS = "rewards"
MONITORING = "monitoring"


@dataclass(frozen=True)
class StoreLayout:
    """The paths of one store root (see the module docstring)."""

    root: str

    def _at(self, sub: str) -> str:
        return storage.join(self.root, *sub.split("/")) if sub else self.root.rstrip("/")

    @property
    def histories(self) -> str:
        return self._at(HISTORIES)

    @property
    def features(self) -> str:
        return self._at(FEATURES)

    @property
    def online(self) -> str:
        return self._at(ONLINE)

    @property
    def registry(self) -> str:
        return self._at(REGISTRY)

    @property
    def decisions(self) -> str:
        return self._at(DECISIONS)

    @property
    def outcomes(self) -> str:
        return self._at(OUTCOMES)

    @property
    def rewards(self) -> str:
        return self._at(REWARDS)

    @property
    def monitoring(self) -> str:
        return self._at(MONITORING)


def store_layout(store: str | None = None) -> StoreLayout:
    """The layout under ``store``, else under ``ATTUNE_STORE`` (default ``./.attune``)."""
    from attune.settings import get_settings

    return StoreLayout(store or get_settings().store)


#: ``--NAME`` options that default to a place in the layout, and the place.
_PLACES = {
    "histories": (HISTORIES, "history root"),
    "features": (FEATURES, "ranking dataset root"),
    "registry": (REGISTRY, "model registry root"),
    "decisions": (DECISIONS, "decision-log root"),
    "outcomes": (OUTCOMES, "outcomes root"),
}


def add_store_argument(parser: argparse.ArgumentParser, *places: str) -> None:
    """Add ``--store`` and one ``--PLACE`` option per name in ``places``.

    Every one defaults to ``None`` and is resolved by :func:`resolve`: an explicit
    ``--PLACE`` wins, else ``<--store or ATTUNE_STORE>/<place>``.
    """
    if not any(action.dest == "store" for action in parser._actions):
        parser.add_argument(
            "--store", default=None, help="store root (default: ATTUNE_STORE, else ./.attune)"
        )
    for place in places:
        sub, what = _PLACES[place]
        parser.add_argument(
            f"--{place}", default=None, help=f"{what} (default: <store>/{sub}; dir or s3://)"
        )


def resolve(args: argparse.Namespace, place: str) -> str:
    """``args.<place>`` if given, else that place under ``args.store`` / ``ATTUNE_STORE``."""
    explicit = getattr(args, place, None)
    if explicit:
        return str(explicit)
    if place not in _PLACES:
        raise KeyError(place)
    return str(getattr(store_layout(getattr(args, "store", None)), place))


def require(uri: str, what: str) -> str:
    """``uri`` if something is stored there, else :class:`StoreNotFound` naming it.

    Commands call this on their inputs before they start Ray, so a typo fails in
    seconds with the path instead of after a cluster start.
    """
    from attune.errors import StoreNotFound

    if storage.is_s3(uri):
        found = bool(storage.list_uris(uri)) or storage.exists(uri)
    else:
        found = storage.exists(uri)
    if not found:
        raise StoreNotFound(uri=uri, problem=f"{what} does not exist")
    return uri
