"""Users from an SQLite database, in place of ``--users FILE``.

    USERS_DB=users.db aiosip-ws serve --app examples/routing/users_sqlite.py \\
        --realm example.com --domain example.com --credentials-ttl 5

``USERS_DB``: an SQLite file with a table ``users(username TEXT, realm TEXT, ha1 TEXT)``
holding MD5 HA1s (``md5(username:realm:password)``, what ``htdigest`` writes).  serve
asks for a user the first time it needs them and keeps the answer ``--credentials-ttl``
seconds (60 by default), a user who does not exist too; a user added to the table can
register that long after a failed attempt at most.  A lookup runs in a thread: the event
loop never waits for the database.
"""
import asyncio
import os
import sqlite3

from aiosip_ws.serve.routing import Credentials

USERS_DB = os.environ.get('USERS_DB', '')
if not USERS_DB:
    raise RuntimeError('set USERS_DB to the SQLite file of the users table')


def _ha1(username: str, realm: str) -> str | None:
    connection = sqlite3.connect('file:%s?mode=ro' % USERS_DB, uri=True, timeout=2.0)
    try:
        row = connection.execute('SELECT ha1 FROM users WHERE username = ? AND realm = ?',
                                 (username, realm)).fetchone()
    finally:
        connection.close()
    return row[0] if row else None


async def credentials(user: str, realm: str) -> Credentials | None:
    ha1 = await asyncio.to_thread(_ha1, user, realm)
    return Credentials(ha1={'MD5': ha1}) if ha1 else None
