import asyncio
from tests.integration.test_ingest import *  # noqa

async def test_scratch(tmp_path, broker_factory):
    probes = [TestProbe.new() for _ in range(4)]
    broker = broker_factory(probe_ids=[p.probe_id for p in probes])
    url = sqlite_url(tmp_path)
    enrol(url, *probes)
    envelopes = {p.probe_id: [p.envelope() for _ in range(100)] for p in probes}
    async with in_process(broker.info, url, "c1") as a, in_process(broker.info, url, "c2") as b:
        await asyncio.gather(*(
            publish(broker.info, p.probe_id, ((p.topic, e) for e in envelopes[p.probe_id]))
            for p in probes
        ))
        for i in range(6):
            await asyncio.sleep(0.5); print("count", count(url), a.stats.received, b.stats.received, a._queue.qsize(), b._queue.qsize(), a._pipeline.qsize(), b._pipeline.qsize())
    log = broker.log_text().splitlines()
    print("\n".join(l for l in log if "PUBLISH" not in l and "PUBACK" not in l)[-3000:])
    print(len([l for l in log if "Sending PUBLISH to c1" in l]), len([l for l in log if "Sending PUBLISH to c2" in l]))
    assert False
