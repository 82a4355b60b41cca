"""Publish a contact and its segment membership the way another system would:
plain pika, persistent messages on the documented queues, no journeys code.

Run: python examples/publish_contact.py amqp://guest:guest@127.0.0.1:5672/%2F
"""

import json
import sys
import time
import uuid

import pika


def publish(channel, queue: str, actor: str, argument: dict) -> None:
    body = {
        "queue_name": queue,
        "actor_name": actor,
        "args": [argument],
        "kwargs": {},
        "options": {},
        "message_id": str(uuid.uuid4()),
        "message_timestamp": int(time.time() * 1000),
    }
    properties = pika.BasicProperties(delivery_mode=2, content_type="application/json")
    channel.basic_publish("", queue, json.dumps(body).encode(), properties)


connection = pika.BlockingConnection(pika.URLParameters(sys.argv[1]))
channel = connection.channel()
channel.confirm_delivery()
contact = {
    "contact_id": "C900001",
    "email": "new.customer@example.com",
    "firstname": "Noor",
}
publish(channel, "events.contacts", "contact_upsert", contact)
membership = {"segment": "spring-campaign", "action": "add", "contacts": ["C900001"]}
publish(channel, "events.segments", "segment_membership", membership)
connection.close()
print("published a contact and its membership")
