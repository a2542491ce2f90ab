"""A minimal faust app for the harness test: forwards each record from IN_TOPIC to OUT_TOPIC."""

from __future__ import annotations

import os

import faust

app = faust.App(
    os.environ["ECHO_GROUP"],
    broker=f"kafka://{os.environ['ECHO_BOOTSTRAP']}",
    store="memory://",
    datadir=os.environ["ECHO_DATADIR"],
    web_enabled=False,
    topic_partitions=int(os.environ.get("ECHO_PARTITIONS", "1")),
    topic_allow_declare=False,
    consumer_auto_offset_reset="earliest",
)
source = app.topic(os.environ["ECHO_IN"], value_serializer="raw", key_serializer="raw")
sink = app.topic(os.environ["ECHO_OUT"], value_serializer="raw", key_serializer="raw")


@app.agent(source)
async def forward(stream: faust.Stream) -> None:
    async for event in stream.events():
        await sink.send(key=event.key, value=b"seen:" + event.value)


if __name__ == "__main__":
    app.main()
