"""The demo data: made-up people whose sensitive-looking values are realistic for the detectors."""

from __future__ import annotations

import re

import pytest

from gatehouse.local.seed import generate_customers, luhn_valid, seed_database

DATABASE = "seed-probe"
CARD = re.compile(r"\b(?:\d{4}[ -]\d{4}[ -]\d{4}[ -]\d{4}|\d{4}[ -]\d{6}[ -]\d{5})\b")
PHONE = re.compile(r"(?:\(\d{3}\) |\+1 \d{3} |\d{3}[-.])555[-. ]01\d\d")
EMAIL = re.compile(r"[\w.+-]+@example\.(?:com|org)")


@pytest.fixture(scope="module")
def rows(postgres):
    seed_database(postgres, DATABASE)
    db = postgres.connect(DATABASE)
    try:
        customers = db.run(
            "SELECT id, name, email, phone, card_number, ssn, notes FROM customers ORDER BY id"
        )
        orders = db.run("SELECT customer_id, amount, created_at, status FROM orders")
        columns = db.run(
            "SELECT table_name, column_name FROM information_schema.columns "
            "WHERE table_schema = 'public' ORDER BY table_name, ordinal_position"
        )
    finally:
        db.close()
    return customers, orders, columns


def test_the_tables_have_the_documented_columns(rows):
    _, _, columns = rows
    by_table: dict[str, list[str]] = {}
    for table, column in columns:
        by_table.setdefault(table, []).append(column)

    assert by_table == {
        "customers": ["id", "name", "email", "phone", "card_number", "ssn", "notes"],
        "orders": ["id", "customer_id", "amount", "created_at", "status"],
    }


def test_there_are_about_fifty_customers_with_orders(rows):
    customers, orders, _ = rows
    ids = {c[0] for c in customers}

    assert len(customers) == 50
    assert len(orders) >= 100 and {o[0] for o in orders} <= ids


def test_every_card_number_passes_luhn_and_uses_a_test_prefix(rows):
    customers, _, _ = rows
    cards = [c[4] for c in customers]

    assert all(luhn_valid(card) for card in cards)
    assert all(re.sub(r"\D", "", card)[:4] in {"4111", "5555", "3782"} for card in cards)
    assert any(" " in card for card in cards) and any("-" in card for card in cards)


def test_ssns_are_well_formed_and_never_in_unissued_ranges(rows):
    customers, _, _ = rows
    for ssn in (c[5] for c in customers):
        area, group, serial = ssn.split("-")
        assert len(area) == 3 and len(group) == 2 and len(serial) == 4
        assert area not in {"000", "666"} and not area.startswith("9")
        assert group != "00" and serial != "0000"


def test_emails_and_phones_are_reserved_for_examples(rows):
    customers, _, _ = rows

    assert all(EMAIL.fullmatch(c[2]) for c in customers)
    assert all(PHONE.fullmatch(c[3]) for c in customers)


def test_some_notes_embed_sensitive_values_and_some_do_not(rows):
    customers, _, _ = rows
    notes = [c[6] for c in customers if c[6]]

    sensitive = [n for n in notes if CARD.search(n) or PHONE.search(n) or EMAIL.search(n)]
    assert any(CARD.search(n) and luhn_valid(CARD.search(n).group()) for n in notes)
    assert any(PHONE.search(n) for n in notes) and any(EMAIL.search(n) for n in notes)
    assert 0 < len(sensitive) < len(notes)


def test_the_data_is_the_same_every_time():
    assert generate_customers("gatehouse/demo-prod") == generate_customers("gatehouse/demo-prod")
    assert generate_customers("gatehouse/demo-dev") != generate_customers("gatehouse/demo-prod")


def test_seeding_again_starts_from_scratch(postgres, rows):
    seed_database(postgres, DATABASE)
    db = postgres.connect(DATABASE)
    try:
        assert db.run("SELECT count(*) FROM customers")[0][0] == 50
    finally:
        db.close()
