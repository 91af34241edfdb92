"""The demo databases: made-up customers and orders, the same every time.

Every value is generated from a seeded random source, so a demo transcript is reproducible.
The people are invented; their sensitive-looking values are built to be realistic for the
masking detectors (card numbers pass Luhn, SSNs follow the SSA's allocation rules, phone
numbers sit in the 555-0100..0199 block reserved for fiction) without belonging to anyone.
"""

from __future__ import annotations

import datetime as dt
import random
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal

from gatehouse.local.postgres import PostgresInfo

DEMO_DATABASES = ("demo-dev", "demo-prod")
# Owns the demo databases and their tables, and never logs in: the roles Gatehouse logs in as get
# grants on its objects, so none of them can drop, alter or re-grant what it did not create.
OWNER_ROLE = "gatehouse_demo_owner"
# EXECUTE to PUBLIC by default, yet they write large objects even in a READ ONLY transaction.
LARGE_OBJECT_WRITERS = (
    "lo_create(oid)",
    "lo_creat(integer)",
    "lo_from_bytea(oid, bytea)",
    "lo_put(oid, bigint, bytea)",
    "lowrite(integer, bytea)",
    "lo_truncate(integer, integer)",
    "lo_truncate64(integer, bigint)",
    "lo_unlink(oid)",
)
CUSTOMER_COUNT = 50
ORDER_COUNT = 150

FIRST_NAMES = (
    "Ada",
    "Bruno",
    "Chiara",
    "Dmitri",
    "Elena",
    "Farid",
    "Grace",
    "Hiro",
    "Ines",
    "Jonas",
    "Kemi",
    "Lars",
    "Maya",
    "Nikhil",
    "Olga",
    "Pablo",
    "Quinn",
    "Rosa",
    "Sami",
    "Tara",
)
LAST_NAMES = (
    "Abbott",
    "Bianchi",
    "Costa",
    "Dubois",
    "Eriksen",
    "Fischer",
    "Garcia",
    "Haddad",
    "Ivanova",
    "Jensen",
    "Kowalski",
    "Lindqvist",
    "Moreau",
    "Nakamura",
    "Okafor",
    "Petrov",
    "Quintero",
    "Rossi",
    "Schmidt",
    "Tanaka",
)
EMAIL_DOMAINS = ("example.com", "example.org")  # RFC 2606: reserved, never delivered
AREA_CODES = ("415", "212", "312", "617", "206", "503")
# Test BINs used by card networks' sandboxes: (prefix, total length, digit grouping).
CARD_BRANDS = (
    ("4111", 16, (4, 4, 4, 4)),  # Visa
    ("5555", 16, (4, 4, 4, 4)),  # Mastercard
    ("3782", 15, (4, 6, 5)),  # American Express
)
ORDER_STATUSES = ("pending", "paid", "shipped", "delivered", "refunded", "cancelled")

SCHEMA = (
    """CREATE TABLE customers (
        id serial PRIMARY KEY,
        name text NOT NULL,
        email text,
        phone text,
        card_number text,
        ssn text,
        notes text
    )""",
    """CREATE TABLE orders (
        id serial PRIMARY KEY,
        customer_id integer NOT NULL REFERENCES customers (id),
        amount numeric(10, 2) NOT NULL,
        created_at date NOT NULL,
        status text NOT NULL
    )""",
)


@dataclass(frozen=True)
class Customer:
    name: str
    email: str
    phone: str
    card_number: str
    ssn: str
    notes: str | None


@dataclass(frozen=True)
class Order:
    customer_id: int
    amount: Decimal
    created_at: dt.date
    status: str


def quote_ident(name: str) -> str:
    """A Postgres identifier, quoted (database names like `demo-dev` need it)."""
    return '"' + name.replace('"', '""') + '"'


def luhn_check_digit(partial: str) -> str:
    """The digit that makes `partial + digit` pass the Luhn check (ISO/IEC 7812-1)."""
    total = 0
    # Walking right to left over the partial number, the first digit is the one doubled
    # (the check digit, appended later, takes the undoubled rightmost position).
    for i, ch in enumerate(reversed(partial)):
        d = int(ch)
        if i % 2 == 0:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    digits = "".join(ch for ch in number if ch.isdigit())
    return len(digits) > 1 and luhn_check_digit(digits[:-1]) == digits[-1]


def _card(rng: random.Random) -> str:
    prefix, length, groups = rng.choice(CARD_BRANDS)
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    digits = body + luhn_check_digit(body)
    parts, pos = [], 0
    for size in groups:
        parts.append(digits[pos : pos + size])
        pos += size
    return rng.choice((" ", "-")).join(parts)


def _phone(rng: random.Random) -> str:
    area, line = rng.choice(AREA_CODES), f"01{rng.randrange(100):02d}"
    style = rng.randrange(4)
    if style == 0:
        return f"({area}) 555-{line}"
    if style == 1:
        return f"{area}-555-{line}"
    if style == 2:
        return f"+1 {area} 555 {line}"
    return f"{area}.555.{line}"


def _ssn(rng: random.Random) -> str:
    # Area 001-665 or 667-899 (000, 666 and 900-999 are never issued); group and serial non-zero.
    area = rng.choice([*range(1, 666), *range(667, 900)])
    return f"{area:03d}-{rng.randint(1, 99):02d}-{rng.randint(1, 9999):04d}"


def _note(rng: random.Random, first: str, last: str) -> str | None:
    alt_email = f"{first[0].lower()}{last.lower()}@{rng.choice(EMAIL_DOMAINS)}"
    order_ref = f"ORD-2024-{rng.randint(1, 999_999):06d}"
    phone = f"{rng.choice(AREA_CODES)}-555-01{rng.randrange(100):02d}"
    card = _card(rng)
    templates = (
        f"Called from {phone} about card {card}",
        f"Asked us to send receipts to {alt_email} instead",
        f"Updated billing card to {card}",
        f"Left a voicemail, call back on {phone}",
        "Prefers email contact",
        f"Order {order_ref} delayed",
        "VIP since 2019; no calls after 6pm",
        f"Refund for {order_ref} approved by support",
        "Requested paper invoices",
        None,
    )
    return rng.choice(templates)


def generate_customers(seed: str, count: int = CUSTOMER_COUNT) -> list[Customer]:
    """`count` made-up customers; the same seed gives the same people."""
    rng = random.Random(seed)
    customers: list[Customer] = []
    seen_emails: set[str] = set()
    for _ in range(count):
        first, last = rng.choice(FIRST_NAMES), rng.choice(LAST_NAMES)
        local = f"{first}.{last}".lower()
        email = f"{local}@{rng.choice(EMAIL_DOMAINS)}"
        n = 2
        while email in seen_emails:
            email = f"{local}{n}@{email.split('@')[1]}"
            n += 1
        seen_emails.add(email)
        customers.append(
            Customer(
                name=f"{first} {last}",
                email=email,
                phone=_phone(rng),
                card_number=_card(rng),
                ssn=_ssn(rng),
                notes=_note(rng, first, last),
            )
        )
    return customers


def generate_orders(seed: str, customer_count: int, count: int = ORDER_COUNT) -> list[Order]:
    rng = random.Random(f"{seed}/orders")
    start = dt.date(2024, 1, 1)
    return [
        Order(
            customer_id=rng.randint(1, customer_count),
            amount=Decimal(rng.randint(500, 50_000)) / 100,
            created_at=start + dt.timedelta(days=rng.randrange(366)),
            status=rng.choice(ORDER_STATUSES),
        )
        for _ in range(count)
    ]


def seed_database(pg: PostgresInfo, database: str, *, customers: int = CUSTOMER_COUNT) -> None:
    """(Re)create `database` with its `customers` and `orders` tables, owned by `OWNER_ROLE`."""
    admin = pg.connect()
    try:
        if not admin.run("SELECT 1 FROM pg_roles WHERE rolname = :role", role=OWNER_ROLE):
            admin.run(f"CREATE ROLE {quote_ident(OWNER_ROLE)} NOLOGIN")
        admin.run(f"DROP DATABASE IF EXISTS {quote_ident(database)} WITH (FORCE)")
        admin.run(f"CREATE DATABASE {quote_ident(database)} OWNER {quote_ident(OWNER_ROLE)}")
    finally:
        admin.close()
    people = generate_customers(f"gatehouse/{database}", customers)
    orders = generate_orders(f"gatehouse/{database}", len(people))
    con = pg.connect(database)
    try:
        con.run("START TRANSACTION")
        # Created as the owner role, so the tables and their sequences are its own.
        con.run(f"SET LOCAL ROLE {quote_ident(OWNER_ROLE)}")
        for ddl in SCHEMA:
            con.run(ddl)
        for c in people:
            con.run(
                "INSERT INTO customers (name, email, phone, card_number, ssn, notes) "
                "VALUES (:name, :email, :phone, :card, :ssn, :notes)",
                name=c.name,
                email=c.email,
                phone=c.phone,
                card=c.card_number,
                ssn=c.ssn,
                notes=c.notes,
            )
        for o in orders:
            con.run(
                "INSERT INTO orders (customer_id, amount, created_at, status) "
                "VALUES (:customer_id, :amount, :created_at, :status)",
                customer_id=o.customer_id,
                amount=o.amount,
                created_at=o.created_at,
                status=o.status,
            )
        con.run("COMMIT")
    finally:
        con.close()


def seed(pg: PostgresInfo, databases: Iterable[str] = DEMO_DATABASES) -> None:
    for database in databases:
        seed_database(pg, database)


def grant_table_access(pg: PostgresInfo, database: str, role: str, *, owner: bool = False) -> None:
    """Let `role` (and, through CONNECT, only it) use `database`'s tables and sequences.

    With `owner`, the role owns the tables and may create new ones, so that DDL a human approved
    can actually run; without it the role reads and writes rows and nothing more.
    """
    db, who = quote_ident(database), quote_ident(role)
    admin = pg.connect()
    try:
        # Databases are open to PUBLIC by default: a demo-dev credential must not reach demo-prod.
        admin.run(f"REVOKE CONNECT, TEMPORARY ON DATABASE {db} FROM PUBLIC")
        admin.run(f"GRANT CONNECT ON DATABASE {db} TO {who}")
    finally:
        admin.close()
    con = pg.connect(database)
    try:
        con.run(f"GRANT USAGE ON SCHEMA public TO {who}")
        con.run(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {who}")
        con.run(f"GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA public TO {who}")
        for function in LARGE_OBJECT_WRITERS:  # function privileges are per database
            con.run(f"REVOKE EXECUTE ON FUNCTION pg_catalog.{function} FROM PUBLIC")
        if owner:
            con.run(f"GRANT CREATE ON SCHEMA public TO {who}")
            tables = con.run("SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY tablename")
            for (table,) in tables:
                # Owning a table also owns its serial sequences.
                con.run(f"ALTER TABLE public.{quote_ident(table)} OWNER TO {who}")
    finally:
        con.close()
