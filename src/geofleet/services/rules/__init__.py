"""The rules engine: topic rules in AWS IoT's shape, evaluated on every accepted publish, with
actions that republish, forward to another region (durably) or call webhooks."""
