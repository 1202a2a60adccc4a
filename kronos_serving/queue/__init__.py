"""RabbitMQ queue workers: each worker consumes forecast requests and answers them (AMQP RPC)."""
from .consumer import JobRecorder, QueueConsumer
from .jobs import StoreJobRecorder

__all__ = ["JobRecorder", "QueueConsumer", "StoreJobRecorder"]
