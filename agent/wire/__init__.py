"""The contract both sides share: record, DSSE envelope, MQTT topics, operator commands, helper
request signing.
"""
