"""The MQTT broker behind one port (``Broker``); the embedded amqtt broker is the default."""

from geofleet.broker.base import Broker, Connection, DisconnectReason, Gate

__all__ = ["Broker", "Connection", "DisconnectReason", "Gate"]
