"""`python -m devtools.createdb URL`: create the PostgreSQL database a URL names, if it does not exist.

For the benchmarks' make targets (BENCH_DATABASE_URL and friends): `createdb` takes no URL, so a
database named in the URL, on another host or port, would not have been created. Connects to the
server's `postgres` database with the URL's user, host and port; prints what it did.
"""

import sys
from urllib.parse import unquote, urlsplit

import psycopg
from psycopg import sql


def main(url: str) -> int:
    parts = urlsplit(url)
    name = unquote(parts.path.lstrip("/"))
    if parts.scheme not in ("postgres", "postgresql", "pgsql") or not name:
        print(f"not a PostgreSQL database URL: {url}", file=sys.stderr)
        return 2
    maintenance = parts._replace(path="/postgres").geturl()
    with psycopg.connect(maintenance, autocommit=True) as connection:
        exists = connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone()
        if exists:
            return 0
        connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    print(f"created database {name}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1]))
