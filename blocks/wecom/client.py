"""The WeCom client: the API methods of every area, composed on one transport.

    WeComClient
    ├── TagsApi       tags.py       corp tags and mark_tag
    ├── ContactsApi   contacts.py   contacts, contact ways, openids
    ├── GroupsApi     groups.py     customer groups, join ways, group statistics
    ├── MessagesApi   messages.py   mass messages, app messages, robot, welcome, Moments
    └── Transport     transport.py  pacing (pacing.py), HTTP, token, retries, errors (errors.py)

Each method declares its API beside itself (`calls.py`): a read, or a write that may or may not
be resent after no answer.
"""

from __future__ import annotations

from siyu.blocks.wecom.contacts import ContactsApi
from siyu.blocks.wecom.groups import GroupsApi
from siyu.blocks.wecom.messages import MessagesApi
from siyu.blocks.wecom.tags import TagsApi


class WeComClient(TagsApi, ContactsApi, GroupsApi, MessagesApi):
    """A WeCom self-built app's connection: call the API with typed methods and models.

    Thread-safe: one client may serve many threads (token fetch and pacing are locked; the
    requests Session pools keep-alive connections).
    """
