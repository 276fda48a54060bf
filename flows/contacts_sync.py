"""The hourly contacts sync: pull every employee's WeCom contacts and bind them to bank customers."""

from __future__ import annotations

from prefect import flow


@flow(name="contacts-sync")
def contacts_sync() -> dict:
    """Pull external contacts from WeCom and bind each to a bank customer (stub until issue 3)."""
    return {"status": "stub"}
