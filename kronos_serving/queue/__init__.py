"""RabbitMQ queue workers: each worker consumes forecast requests and answers them (AMQP RPC)."""
from .consumer import JobRecorder, QueueConsumer

__all__ = ["JobRecorder", "QueueConsumer"]
