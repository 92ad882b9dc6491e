"""`Links`: the shard's miner connections, one `MinerLink` per miner (docs/synthetic-batch.md §1).

`open_links` builds them (nothing is connected yet: the manifest phase connects them all at once)
and `close_links` closes them, whatever the shard's outcome.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from horde_common.protocol.miner.session import JobRegistry, MinerSession
from horde_job_runner.synthetic.link import LinkListener, MinerLink

if TYPE_CHECKING:
    from horde_common.bus.messages import MinerEndpoint
    from horde_job_runner.synthetic.model import BatchDeps
    from horde_job_runner.synthetic.shard_services import Signer

__all__ = ["Links", "close_links", "open_links"]


@dataclass(frozen=True)
class Links:
    """The links in their (shuffled) order, and the same links by miner hotkey.

    Frozen: the set of links never changes once opened; each link's own state does.
    """

    all: tuple[MinerLink, ...] = ()
    by_hotkey: dict[str, MinerLink] = field(default_factory=dict)

    def __iter__(self) -> Iterator[MinerLink]:
        return iter(self.all)

    def __len__(self) -> int:
        return len(self.all)

    def __getitem__(self, hotkey: str) -> MinerLink:
        return self.by_hotkey[hotkey]

    def get(self, hotkey: str) -> MinerLink | None:
        return self.by_hotkey.get(hotkey)

    @property
    def manifest_count(self) -> int:
        """How many miners sent a manifest."""
        return sum(1 for link in self.all if link.manifest is not None)


def open_links(
    miners: list[MinerEndpoint], deps: BatchDeps, *, signer: Signer, listener: LinkListener
) -> Links:
    """One `MinerLink` per miner, in a shuffled order (`deps.rng`), each reporting to `listener`.

    A miner listed twice gets one connection. The sessions share one `JobRegistry`, so a job uuid
    is known to the session it was registered with only.
    """
    registry = JobRegistry()
    deps.rng.shuffle(miners)
    links: list[MinerLink] = []
    by_hotkey: dict[str, MinerLink] = {}
    for endpoint in miners:
        if endpoint.hotkey in by_hotkey:
            continue  # one connection per miner, even if listed twice
        if deps.session_factory is not None:
            session = deps.session_factory(endpoint, registry)
        else:
            session = MinerSession(
                validator_hotkey=signer.hotkey,
                sign=signer.sign,
                miner_hotkey=endpoint.hotkey,
                miner_address=endpoint.address,
                miner_port=endpoint.port,
                registry=registry,
            )
        link = MinerLink(
            endpoint,
            session,
            clock=deps.clock,
            listener=listener,
            transport_factory=deps.transport_factory,
            transport_settings=deps.transport_settings,
            sleep=deps.sleep,
            rng=deps.rng.random,
        )
        links.append(link)
        by_hotkey[endpoint.hotkey] = link
    return Links(tuple(links), by_hotkey)


async def close_links(links: Links, grace_s: float) -> None:
    """Close every link (each within `grace_s`); a failure to close is nobody's fault."""
    if links.all:
        await asyncio.gather(*(link.close(grace_s) for link in links.all), return_exceptions=True)
