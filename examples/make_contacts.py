"""Generate a deterministic CSV of fictional contacts for tests and demos.

The contacts belong to a fictional European company with customers in ten countries.
The same count and seed always produce the same file, because all randomness comes
from one ``random.Random(seed)``. Only the standard library is used.

Approximate shares, each drawn independently per row:

- 4% unsubscribed, 80% ``customer`` and the rest ``lead``;
- about 12% of contacts have a non-ASCII first or last name (accented Latin letters
  or a non-Latin script);
- 1% invalid e-mail addresses, which are still well-formed CSV rows;
- 1% duplicates: a later contact with the address of an earlier one, about half of
  them differing only by letter case.

Apart from the duplicates, every address is unique ignoring case. When a
``firstname.lastname`` address is taken, the next contact gets a numeric suffix.

Exactly one contact has the first name ``<b>Eve</b>`` (at row ``count // 3``) and
exactly one has the last name ``"quotes" & ampersand`` (at row ``2 * count // 3``).
With ``count < 2`` both positions are row 0, so only the ``<b>Eve</b>`` row is made.

Usage::

    python examples/make_contacts.py --count 10000 --seed 7 --out /tmp/contacts.csv
"""

from __future__ import annotations

import argparse
import csv
import datetime
import functools
import itertools
import random
import string
import sys
import time
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

FIELDNAMES = (
    "contact_id",
    "email",
    "firstname",
    "lastname",
    "unsubscribed",
    "lifecycle_stage",
    "country",
    "city",
    "language",
    "signup_date",
)

DEFAULT_COUNT = 3000
DEFAULT_SEED = 7
DEFAULT_OUT = Path(__file__).resolve().with_name("contacts.csv")

UNSUBSCRIBED_SHARE = 0.04
CUSTOMER_SHARE = 0.80
INVALID_SHARE = 0.01
DUPLICATE_SHARE = 0.01
# Share of duplicates whose address differs from the original only by letter case.
CASE_VARIANT_SHARE = 0.5
NON_LATIN_SHARE = 0.05
ACCENTED_SHARE = 0.075
# Share of contacts whose name comes from another country's naming tradition.
MIGRANT_SHARE = 0.10
# Share of contacts who prefer English over the local language.
ENGLISH_SHARE = 0.12

FIRST_SIGNUP = datetime.date(2019, 1, 1)
LAST_SIGNUP = datetime.date(2026, 11, 30)

MARKUP_FIRSTNAME = "<b>Eve</b>"
QUOTES_LASTNAME = '"quotes" & ampersand'

# Subdomains of example.com, example.org and example.net only. RFC 2606 reserves these
# second-level domains as examples for documentation, so no real person owns them.
DOMAINS = (
    ("mail.example.com", 30),
    ("post.example.org", 20),
    ("inbox.example.net", 20),
    ("webmail.example.com", 15),
    ("mx.example.org", 10),
    ("example.net", 5),
)

# Letters that NFKD does not split into a base letter and a combining accent.
_EXTRA_LETTERS = str.maketrans(
    {
        "ß": "ss",
        "ł": "l",
        "Ł": "L",
        "ø": "o",
        "Ø": "O",
        "æ": "ae",
        "Æ": "Ae",
        "œ": "oe",
        "Œ": "Oe",
        "đ": "d",
        "Đ": "D",
    }
)
_LOCAL_PART_CHARS = frozenset(string.ascii_lowercase + string.digits + "-")


@dataclass(frozen=True)
class NamePool:
    """Given names by gender and surnames of one naming tradition.

    A surname written ``"Kowalski/Kowalska"`` has a male and a female form. A name in
    a non-Latin script carries its romanization after ``=``, as in ``"Иванов=Ivanov"``.
    The romanization is used only for the e-mail address.
    """

    male: tuple[str, ...]
    female: tuple[str, ...]
    surnames: tuple[str, ...]


@dataclass(frozen=True)
class Culture:
    """Plain ASCII names and names with accented letters of one tradition."""

    plain: NamePool
    accented: NamePool


@dataclass(frozen=True)
class Region:
    """Part of a country with one naming tradition and one local language."""

    culture: str
    language: str
    cities: tuple[str, ...]
    weight: float = 1.0


@dataclass(frozen=True)
class Country:
    """A country by ISO 3166 alpha-2 code, with its share of all contacts."""

    code: str
    weight: float
    regions: tuple[Region, ...]


# The name and city tables are kept one short line per group of names, because the
# formatter would otherwise put each of about 800 strings on a line of its own.
# fmt: off
CULTURES = {
    "irish": Culture(
        plain=NamePool(
            male=(
                "Liam", "Conor", "Sean", "Patrick", "James", "Jack", "Daniel",
                "Michael", "Cian", "Ryan", "Thomas", "David", "Oisin", "Adam",
                "Luke", "Darragh", "Kevin",
            ),
            female=(
                "Aoife", "Emma", "Sarah", "Ciara", "Niamh", "Grace", "Emily",
                "Kate", "Sophie", "Rachel", "Laura", "Amy", "Chloe", "Hannah",
                "Megan", "Orla", "Mary-Kate",
            ),
            surnames=(
                "Murphy", "Kelly", "O'Brien", "O'Sullivan", "Walsh", "Byrne",
                "Ryan", "O'Connor", "O'Neill", "Doyle", "McCarthy", "Gallagher",
                "Kennedy", "Lynch", "Smith", "Brennan", "Quinn", "O'Reilly",
                "Fitzgerald", "Nolan", "D'Arcy", "MacNamara",
            ),
        ),
        accented=NamePool(
            male=("Seán", "Pádraig", "Ciarán", "Éamon", "Tomás"),
            female=("Zoë", "Siobhán", "Róisín", "Sinéad", "Aoibhín", "Órla"),
            surnames=("Ó Briain", "Ó Súilleabháin", "Mac Cárthaigh", "Ó Néill"),
        ),
    ),
    "german": Culture(
        plain=NamePool(
            male=(
                "Lukas", "Leon", "Felix", "Jonas", "Paul", "Maximilian", "Stefan",
                "Thomas", "Michael", "Andreas", "Florian", "Tobias", "Markus",
                "Sebastian", "Jan", "Hans-Peter", "Wolfgang",
            ),
            female=(
                "Anna", "Lena", "Laura", "Julia", "Sarah", "Lea", "Katharina",
                "Sabine", "Claudia", "Nicole", "Hannah", "Marie", "Johanna",
                "Franziska", "Eva", "Anne-Kathrin", "Ursula",
            ),
            surnames=(
                "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner",
                "Becker", "Schulz", "Hoffmann", "Koch", "Richter", "Klein", "Wolf",
                "Neumann", "Schwarz", "Zimmermann", "Braun", "Hartmann", "Lange",
                "Werner", "von Bergen",
            ),
        ),
        accented=NamePool(
            male=("Jürgen", "Björn", "Jörg", "Sören", "Günter", "Jörn"),
            female=("Bärbel", "Käthe", "Dörte", "Jördis"),
            surnames=(
                "Müller", "Schäfer", "Köhler", "Krüger", "König", "Böhm", "Jäger",
                "Weiß", "Groß", "Schröder", "Möller", "Fuß",
            ),
        ),
    ),
    "dutch": Culture(
        plain=NamePool(
            male=(
                "Daan", "Sem", "Lucas", "Jesse", "Thijs", "Bram", "Ruben", "Lars",
                "Joost", "Pieter", "Jan", "Sander", "Bas", "Willem", "Maarten",
                "Koen", "Jan-Willem",
            ),
            female=(
                "Emma", "Julia", "Sophie", "Anouk", "Fleur", "Lotte", "Sanne",
                "Eva", "Femke", "Lisa", "Iris", "Marloes", "Noor", "Anne", "Esther",
                "Ilse", "Anne-Marie",
            ),
            surnames=(
                "de Jong", "Jansen", "de Vries", "van den Berg", "van Dijk",
                "Bakker", "Janssen", "Visser", "Smit", "Meijer", "de Boer",
                "Mulder", "de Groot", "Bos", "Vos", "Peters", "Hendriks",
                "van Leeuwen", "Dekker", "Brouwer", "van 't Hof", "Peeters",
            ),
        ),
        accented=NamePool(
            male=("Joël", "Michaël", "Noël", "Raphaël"),
            female=("Chloë", "Zoë", "Daniëlle", "Mariëlle", "Noëlle"),
            surnames=("Daniëls", "Michiëls", "Hoëll"),
        ),
    ),
    "french": Culture(
        plain=NamePool(
            male=(
                "Lucas", "Hugo", "Louis", "Nicolas", "Julien", "Thomas", "Pierre",
                "Antoine", "Mathieu", "Alexandre", "Baptiste", "Romain",
                "Guillaume", "Olivier", "Vincent", "Jean-Luc", "Arthur",
            ),
            female=(
                "Camille", "Manon", "Sarah", "Julie", "Marie", "Pauline", "Claire",
                "Sophie", "Lucie", "Juliette", "Margaux", "Charlotte", "Isabelle",
                "Nathalie", "Louise", "Marie-Claire", "Emma",
            ),
            surnames=(
                "Martin", "Bernard", "Dubois", "Thomas", "Robert", "Richard",
                "Petit", "Durand", "Leroy", "Moreau", "Simon", "Laurent", "Michel",
                "Garcia", "David", "Bertrand", "Roux", "Vincent", "Fournier",
                "Dupont", "D'Amour", "L'Heureux",
            ),
        ),
        accented=NamePool(
            male=(
                "Jérôme", "Théo", "Clément", "Raphaël", "Gaëtan", "Sébastien",
                "Frédéric", "André", "Noé",
            ),
            female=(
                "Chloé", "Léa", "Zoé", "Hélène", "Élodie", "Mélanie", "Cécile",
                "Inès", "Anaïs", "Françoise",
            ),
            surnames=(
                "Lefèvre", "Lemaître", "Hébert", "Février", "Dufrêne", "Gérard",
                "Bénard", "Lefèbvre",
            ),
        ),
    ),
    "spanish": Culture(
        plain=NamePool(
            male=(
                "Javier", "Carlos", "Pablo", "Daniel", "Alejandro", "David",
                "Sergio", "Diego", "Manuel", "Antonio", "Jorge", "Miguel", "Pedro",
                "Luis", "Francisco", "Juan Carlos",
            ),
            female=(
                "Laura", "Carmen", "Paula", "Marta", "Sara", "Elena", "Ana",
                "Cristina", "Isabel", "Sofia", "Alba", "Irene", "Nuria", "Raquel",
                "Pilar", "Rosa",
            ),
            surnames=(
                "Moreno", "Navarro", "Torres", "Romero", "Alonso", "Ruiz",
                "Molina", "Ortega", "Delgado", "Castro", "Vega", "Serrano",
                "Blanco", "Herrera", "Medina", "Garrido", "Santos", "Iglesias",
                "Vidal", "Campos", "de la Fuente",
            ),
        ),
        accented=NamePool(
            male=("José", "Álvaro", "Raúl", "Rubén", "Adrián", "Iván", "Jesús"),
            female=("Lucía", "María", "Sofía", "Inés", "Begoña", "Mónica"),
            surnames=(
                "García", "Rodríguez", "González", "Fernández", "López",
                "Martínez", "Sánchez", "Pérez", "Gómez", "Jiménez", "Díaz",
                "Muñoz", "Núñez",
            ),
        ),
    ),
    "italian": Culture(
        plain=NamePool(
            male=(
                "Marco", "Luca", "Giuseppe", "Francesco", "Alessandro", "Andrea",
                "Matteo", "Lorenzo", "Davide", "Simone", "Federico", "Riccardo",
                "Stefano", "Paolo", "Giovanni", "Gian Marco",
            ),
            female=(
                "Giulia", "Francesca", "Chiara", "Sara", "Martina", "Alessia",
                "Valentina", "Elena", "Federica", "Silvia", "Elisa", "Anna",
                "Sofia", "Laura", "Giorgia", "Anna Maria",
            ),
            surnames=(
                "Rossi", "Russo", "Ferrari", "Esposito", "Bianchi", "Romano",
                "Colombo", "Ricci", "Marino", "Greco", "Bruno", "Gallo", "Conti",
                "De Luca", "Costa", "Giordano", "Mancini", "D'Angelo", "D'Amico",
                "Lombardi", "Moretti", "Dell'Acqua", "Barbieri",
            ),
        ),
        accented=NamePool(
            male=("Niccolò", "Nicolò", "Mosè"),
            female=("Noè", "Cloè"),
            surnames=("Cantù", "Mosè", "Pirrò", "Fabbrò", "Donà"),
        ),
    ),
    "polish": Culture(
        plain=NamePool(
            male=(
                "Jakub", "Jan", "Piotr", "Tomasz", "Krzysztof", "Marcin", "Adam",
                "Kamil", "Marek", "Robert", "Dawid", "Bartosz", "Mateusz",
                "Wojciech", "Szymon",
            ),
            female=(
                "Anna", "Katarzyna", "Magdalena", "Agnieszka", "Joanna", "Monika",
                "Ewa", "Natalia", "Zofia", "Julia", "Aleksandra", "Karolina",
                "Marta", "Paulina", "Weronika",
            ),
            surnames=(
                "Nowak", "Kowalski/Kowalska", "Mazur", "Krawczyk", "Kaczmarek",
                "Lewandowski/Lewandowska", "Jankowski/Jankowska",
                "Kwiatkowski/Kwiatkowska", "Piotrowski/Piotrowska",
                "Grabowski/Grabowska", "Michalski/Michalska", "Nowicki/Nowicka",
                "Adamczyk", "Dudek", "Wieczorek", "Majewski/Majewska",
                "Olszewski/Olszewska", "Jaworski/Jaworska", "Pawlak", "Walczak",
                "Sikora",
            ),
        ),
        accented=NamePool(
            male=("Łukasz", "Paweł", "Michał", "Przemysław", "Grzegorz"),
            female=("Małgorzata", "Bożena", "Elżbieta", "Grażyna", "Jolanta"),
            surnames=(
                "Wiśniewski/Wiśniewska", "Wójcik", "Kamiński/Kamińska",
                "Zieliński/Zielińska", "Szymański/Szymańska", "Woźniak",
                "Dąbrowski/Dąbrowska", "Kozłowski/Kozłowska", "Król", "Zając",
            ),
        ),
    ),
    "nordic": Culture(
        plain=NamePool(
            male=(
                "Erik", "Lars", "Anders", "Johan", "Karl", "Per", "Nils", "Oskar",
                "William", "Lucas", "Hugo", "Axel", "Gustav", "Magnus", "Fredrik",
            ),
            female=(
                "Anna", "Maria", "Karin", "Sara", "Emma", "Elin", "Ida", "Maja",
                "Ebba", "Linnea", "Sofia", "Klara", "Alice", "Astrid", "Ingrid",
            ),
            surnames=(
                "Andersson", "Johansson", "Karlsson", "Nilsson", "Eriksson",
                "Larsson", "Olsson", "Persson", "Svensson", "Gustafsson",
                "Pettersson", "Jonsson", "Jansson", "Hansson", "Bengtsson",
                "Lindberg", "Lindqvist", "Berg", "Lundberg", "Holm",
            ),
        ),
        # Also Danish and Norwegian names, for ø and æ, which Swedish spelling lacks.
        accented=NamePool(
            male=("Björn", "Göran", "Åke", "Jörgen", "Östen", "Søren", "Bjørn"),
            female=("Åsa", "Märta", "Linnéa", "Ragnhild-Åse", "Sølvi"),
            surnames=(
                "Sjögren", "Åberg", "Ström", "Löfgren", "Bäckström", "Sandström",
                "Öberg", "Ørsted", "Søndergaard", "Kjær",
            ),
        ),
    ),
}

# Names in non-Latin scripts, each with a romanization for the e-mail address.
# Japanese, Chinese and Korean names are written family name first, but here the
# given name goes to ``firstname`` and the family name to ``lastname`` as for every
# other contact.
NON_LATIN_POOLS = (
    NamePool(  # Japanese
        male=("太郎=Taro", "健=Ken", "翔太=Shota", "大輔=Daisuke"),
        female=("花子=Hanako", "陽菜=Hina", "美咲=Misaki", "さくら=Sakura"),
        surnames=("山田=Yamada", "佐藤=Sato", "鈴木=Suzuki", "高橋=Takahashi"),
    ),
    NamePool(  # Chinese
        male=("伟=Wei", "磊=Lei", "明=Ming", "浩然=Haoran"),
        female=("芳=Fang", "静=Jing", "秀英=Xiuying", "丽=Li"),
        surnames=("王=Wang", "李=Li", "张=Zhang", "刘=Liu", "陈=Chen"),
    ),
    NamePool(  # Korean
        male=("민준=Minjun", "지호=Jiho", "서준=Seojun"),
        female=("서연=Seoyeon", "하은=Haeun", "지우=Jiwoo"),
        surnames=("김=Kim", "이=Lee", "박=Park", "최=Choi"),
    ),
    NamePool(  # Russian
        male=("Алексей=Aleksei", "Дмитрий=Dmitri", "Сергей=Sergei", "Иван=Ivan"),
        female=("Ольга=Olga", "Наталья=Natalya", "Анна=Anna", "Екатерина=Ekaterina"),
        surnames=(
            "Иванов=Ivanov/Иванова=Ivanova",
            "Смирнов=Smirnov/Смирнова=Smirnova",
            "Кузнецов=Kuznetsov/Кузнецова=Kuznetsova",
            "Волков=Volkov/Волкова=Volkova",
        ),
    ),
    NamePool(  # Ukrainian
        male=("Андрій=Andrii", "Олександр=Oleksandr", "Богдан=Bohdan"),
        female=("Олена=Olena", "Оксана=Oksana", "Ірина=Iryna"),
        surnames=("Шевченко=Shevchenko", "Коваленко=Kovalenko", "Бондар=Bondar"),
    ),
    NamePool(  # Greek
        male=("Γιώργος=Giorgos", "Νίκος=Nikos", "Δημήτρης=Dimitris"),
        female=("Μαρία=Maria", "Ελένη=Eleni", "Κατερίνα=Katerina"),
        surnames=(
            "Παπαδόπουλος=Papadopoulos/Παπαδοπούλου=Papadopoulou",
            "Οικονόμου=Oikonomou",
            "Γεωργίου=Georgiou",
        ),
    ),
    NamePool(  # Arabic
        male=("محمد=Mohammed", "عمر=Omar", "يوسف=Youssef", "أحمد=Ahmed"),
        female=("فاطمة=Fatima", "ليلى=Layla", "مريم=Maryam", "نور=Nour"),
        surnames=("حسن=Hassan", "خليل=Khalil", "منصور=Mansour", "العلي=Alali"),
    ),
    NamePool(  # Hindi
        male=("अर्जुन=Arjun", "राहुल=Rahul"),
        female=("प्रिया=Priya", "अनन्या=Ananya"),
        surnames=("शर्मा=Sharma", "पटेल=Patel", "गुप्ता=Gupta"),
    ),
)

# Shares of all contacts per country sum to 1.0. Cities are listed from largest to
# smallest and drawn with falling weights.
COUNTRIES = (
    Country("DE", 0.25, (
        Region("german", "de", (
            "Berlin", "Hamburg", "München", "Köln", "Frankfurt am Main",
            "Stuttgart", "Düsseldorf", "Leipzig", "Dortmund", "Essen", "Bremen",
            "Dresden", "Hannover", "Nürnberg",
        )),
    )),
    Country("NL", 0.12, (
        Region("dutch", "nl", (
            "Amsterdam", "Rotterdam", "Den Haag", "Utrecht", "Eindhoven",
            "Groningen", "Tilburg", "Almere", "Breda", "Nijmegen",
            "'s-Hertogenbosch",
        )),
    )),
    Country("FR", 0.15, (
        Region("french", "fr", (
            "Paris", "Marseille", "Lyon", "Toulouse", "Nice", "Nantes",
            "Strasbourg", "Montpellier", "Bordeaux", "Lille", "Rennes", "Reims",
        )),
    )),
    Country("AT", 0.05, (
        Region("german", "de", (
            "Wien", "Graz", "Linz", "Salzburg", "Innsbruck", "Klagenfurt",
            "Villach", "Wels", "St. Pölten",
        )),
    )),
    # Flanders speaks Dutch and Wallonia French. Brussels is bilingual and is listed
    # with the French-speaking cities.
    Country("BE", 0.06, (
        Region("dutch", "nl", (
            "Antwerpen", "Gent", "Brugge", "Leuven", "Mechelen", "Hasselt",
        ), weight=0.6),
        Region("french", "fr", (
            "Bruxelles", "Liège", "Charleroi", "Namur", "Mons",
        ), weight=0.4),
    )),
    Country("IE", 0.05, (
        Region("irish", "en", (
            "Dublin", "Cork", "Limerick", "Galway", "Waterford", "Drogheda",
            "Kilkenny", "Sligo",
        )),
    )),
    Country("ES", 0.11, (
        Region("spanish", "es", (
            "Madrid", "Barcelona", "Valencia", "Sevilla", "Zaragoza", "Málaga",
            "Bilbao", "Alicante", "Córdoba", "Valladolid", "A Coruña", "Palma",
        )),
    )),
    Country("IT", 0.11, (
        Region("italian", "it", (
            "Roma", "Milano", "Napoli", "Torino", "Palermo", "Genova", "Bologna",
            "Firenze", "Bari", "Catania", "Verona", "Venezia",
        )),
    )),
    Country("PL", 0.06, (
        Region("polish", "pl", (
            "Warszawa", "Kraków", "Łódź", "Wrocław", "Poznań", "Gdańsk",
            "Szczecin", "Lublin", "Katowice", "Bydgoszcz",
        )),
    )),
    Country("SE", 0.04, (
        Region("nordic", "sv", (
            "Stockholm", "Göteborg", "Malmö", "Uppsala", "Västerås", "Örebro",
            "Linköping", "Helsingborg", "Lund", "Umeå",
        )),
    )),
)
# fmt: on

# A display name and the lowercase ASCII form of it for the e-mail address.
Name = tuple[str, str]


@dataclass(frozen=True)
class ParsedPool:
    """A NamePool with every entry split into display name and address form."""

    male: tuple[Name, ...]
    female: tuple[Name, ...]
    # Each surname as (male form, female form), which are equal for most surnames.
    surnames: tuple[tuple[Name, Name], ...]


def ascii_local_part(name: str) -> str:
    """Return ``name`` as lowercase ASCII for an e-mail local part.

    Accents are stripped with Unicode NFKD decomposition, letters without a
    decomposition (such as ß, ł and ø) are spelled out, and every character other
    than ``a-z``, ``0-9`` and ``-`` is dropped: spaces, apostrophes and any letter
    of a non-Latin script.
    """
    decomposed = unicodedata.normalize("NFKD", name.translate(_EXTRA_LETTERS))
    return "".join(char for char in decomposed.lower() if char in _LOCAL_PART_CHARS)


def _parse_name(entry: str) -> Name:
    display, _, romanized = entry.partition("=")
    local = ascii_local_part(romanized or display)
    if not local:
        raise ValueError(
            f"name {display!r} has no ASCII letters for an e-mail address. "
            "Add a romanization after '=', as in 'Иванов=Ivanov'."
        )
    return display, local


def _parse_pool(pool: NamePool) -> ParsedPool:
    surnames = []
    for entry in pool.surnames:
        male_form, _, female_form = entry.partition("/")
        male = _parse_name(male_form)
        female = _parse_name(female_form) if female_form else male
        surnames.append((male, female))
    return ParsedPool(
        male=tuple(_parse_name(entry) for entry in pool.male),
        female=tuple(_parse_name(entry) for entry in pool.female),
        surnames=tuple(surnames),
    )


_PLAIN_POOLS = {name: _parse_pool(culture.plain) for name, culture in CULTURES.items()}
_ACCENTED_POOLS = {
    name: _parse_pool(culture.accented) for name, culture in CULTURES.items()
}
_NON_LATIN_POOLS = tuple(_parse_pool(pool) for pool in NON_LATIN_POOLS)
_CULTURE_NAMES = tuple(CULTURES)


@functools.cache
def _falling_cum_weights(size: int) -> tuple[float, ...]:
    """Return cumulative weights 1, 1/2**0.8, 1/3**0.8, ... for ``size`` items."""
    return tuple(itertools.accumulate(1 / rank**0.8 for rank in range(1, size + 1)))


_COUNTRY_CUM_WEIGHTS = list(itertools.accumulate(c.weight for c in COUNTRIES))
_REGION_CUM_WEIGHTS = {
    c.code: list(itertools.accumulate(r.weight for r in c.regions)) for c in COUNTRIES
}
_DOMAIN_NAMES = tuple(domain for domain, _ in DOMAINS)
_DOMAIN_CUM_WEIGHTS = list(itertools.accumulate(weight for _, weight in DOMAINS))

# Number of earlier contacts kept as candidates for a duplicate address. A bounded
# reservoir keeps memory flat for large counts and still spreads duplicates over
# the whole file.
_RESERVOIR_SIZE = 1000


def _pick_name(rng: random.Random, culture: str) -> tuple[Name, Name]:
    """Pick a first and last name, with accented and non-Latin names at their shares."""
    female = rng.random() < 0.5
    draw = rng.random()
    if draw < NON_LATIN_SHARE:
        pool = rng.choice(_NON_LATIN_POOLS)
        return _pick_from(rng, pool, pool, female)
    plain = _PLAIN_POOLS[culture]
    if draw >= NON_LATIN_SHARE + ACCENTED_SHARE:
        return _pick_from(rng, plain, plain, female)

    # Accent the first name, the last name or both. A culture without accented
    # first names of this gender falls back to an accented last name.
    accented = _ACCENTED_POOLS[culture]
    part = rng.random()
    accented_first = part < 0.4 or part >= 0.8
    accented_last = part >= 0.4
    if accented_first and not (accented.female if female else accented.male):
        accented_first, accented_last = False, True
    first_pool = accented if accented_first else plain
    last_pool = accented if accented_last else plain
    return _pick_from(rng, first_pool, last_pool, female)


def _pick_from(
    rng: random.Random, first_pool: ParsedPool, last_pool: ParsedPool, female: bool
) -> tuple[Name, Name]:
    firstname = rng.choice(first_pool.female if female else first_pool.male)
    male_surname, female_surname = rng.choice(last_pool.surnames)
    return firstname, female_surname if female else male_surname


def _pick_domain(rng: random.Random) -> str:
    return rng.choices(_DOMAIN_NAMES, cum_weights=_DOMAIN_CUM_WEIGHTS)[0]


def _invalid_address_candidates(local: str, domain: str) -> list[str]:
    """Return malformed variants of ``local@domain``, one per kind of mistake."""
    first, _, rest = local.partition(".")
    return [
        f"{local}.{domain}",  # no at sign
        f"{local}@@{domain}",  # two at signs
        f"{local}.@{domain}",  # dot at the end of the local part
        f".{local}@{domain}",  # dot at the start of the local part
        f"{first}..{rest or first}@{domain}",  # two consecutive dots
        f"{first} {rest or first}@{domain}",  # space in the local part
        f"{local}@",  # empty domain
        f"{local}@{domain.replace('.', ',', 1)}",  # comma instead of dot in domain
        f"@{domain}",  # empty local part
    ]


def _case_variant(rng: random.Random, email: str) -> str:
    """Return ``email`` with a different letter case, as a user might retype it."""
    local, _, domain = email.partition("@")
    style = rng.randrange(3)
    if style == 0:
        local = ".".join(part.capitalize() for part in local.split("."))
    elif style == 1:
        return email.upper()
    else:
        domain = domain.upper()
    variant = f"{local}@{domain}"
    # Capitalizing leaves a local part that starts with a digit unchanged.
    return variant if variant != email else email.upper()


def _random_signup(rng: random.Random, earliest: datetime.date = FIRST_SIGNUP) -> str:
    """Return an ISO date drawn uniformly from ``earliest`` to LAST_SIGNUP inclusive."""
    start = earliest
    span = (LAST_SIGNUP - start).days
    return (start + datetime.timedelta(days=rng.randint(0, span))).isoformat()


def generate(count: int, seed: int) -> Iterator[dict[str, str]]:
    """Yield ``count`` contacts as dicts keyed by FIELDNAMES, in CSV order.

    The module docstring lists the shares and the two rows with markup and quotes.
    Raises ValueError if ``count`` is negative.
    """
    if count < 0:
        raise ValueError(f"count must be 0 or more, got {count}")

    rng = random.Random(seed)
    markup_row = count // 3
    quotes_row = (2 * count) // 3
    # Lowercased addresses already given out, valid or not.
    used: set[str] = set()
    # Next numeric suffix for each taken firstname.lastname@domain.
    next_suffix: dict[str, int] = {}
    reservoir: list[dict[str, str]] = []
    normal_rows_seen = 0

    for index in range(count):
        row = _base_row(rng, index)
        draw = rng.random()

        if index == markup_row:
            row["firstname"] = MARKUP_FIRSTNAME
            row["email"] = _unique_address(rng, "eve.markup", used, next_suffix)
        elif index == quotes_row:
            row["lastname"] = QUOTES_LASTNAME
            local = f"{row['_first_local']}.quotes"
            row["email"] = _unique_address(rng, local, used, next_suffix)
        elif draw < DUPLICATE_SHARE and reservoir:
            original = rng.choice(reservoir)
            # The same person signing up again, so name and place are kept.
            for field in ("firstname", "lastname", "country", "city", "language"):
                row[field] = original[field]
            original_date = datetime.date.fromisoformat(original["signup_date"])
            row["signup_date"] = _random_signup(rng, earliest=original_date)
            email = original["email"]
            if rng.random() < CASE_VARIANT_SHARE:
                email = _case_variant(rng, email)
            row["email"] = email
        elif draw < DUPLICATE_SHARE + INVALID_SHARE:
            row["email"] = _invalid_address(rng, row, used, next_suffix)
        else:
            local = f"{row.pop('_first_local')}.{row.pop('_last_local')}"
            row["email"] = _unique_address(rng, local, used, next_suffix)
            # Reservoir sampling (Algorithm R) keeps a uniform sample of all
            # normal rows so far, for duplicates of early and late contacts alike.
            normal_rows_seen += 1
            if len(reservoir) < _RESERVOIR_SIZE:
                reservoir.append(row)
            else:
                slot = rng.randrange(normal_rows_seen)
                if slot < _RESERVOIR_SIZE:
                    reservoir[slot] = row

        row.pop("_first_local", None)
        row.pop("_last_local", None)
        yield {field: row[field] for field in FIELDNAMES}


def _base_row(rng: random.Random, index: int) -> dict[str, str]:
    """Draw every field of a contact except the e-mail address.

    The ASCII address forms of the names are returned under ``_first_local`` and
    ``_last_local`` for the caller to build the address.
    """
    country = rng.choices(COUNTRIES, cum_weights=_COUNTRY_CUM_WEIGHTS)[0]
    region = rng.choices(
        country.regions, cum_weights=_REGION_CUM_WEIGHTS[country.code]
    )[0]
    city_weights = _falling_cum_weights(len(region.cities))
    city = rng.choices(region.cities, cum_weights=city_weights)[0]

    culture = region.culture
    if rng.random() < MIGRANT_SHARE:
        culture = rng.choice(_CULTURE_NAMES)
    (firstname, first_local), (lastname, last_local) = _pick_name(rng, culture)

    language = region.language
    if rng.random() < ENGLISH_SHARE:
        language = "en"

    return {
        "contact_id": f"C{index + 1:06d}",
        "firstname": firstname,
        "lastname": lastname,
        "unsubscribed": "true" if rng.random() < UNSUBSCRIBED_SHARE else "false",
        "lifecycle_stage": "customer" if rng.random() < CUSTOMER_SHARE else "lead",
        "country": country.code,
        "city": city,
        "language": language,
        "signup_date": _random_signup(rng),
        "_first_local": first_local,
        "_last_local": last_local,
    }


def _unique_address(
    rng: random.Random, local: str, used: set[str], next_suffix: dict[str, int]
) -> str:
    """Return ``local@domain`` on a random domain, with a numeric suffix if taken."""
    domain = _pick_domain(rng)
    base = f"{local}@{domain}"
    address = base
    suffix = next_suffix.get(base, 1)
    while address in used:
        suffix += 1
        address = f"{local}{suffix}@{domain}"
    next_suffix[base] = suffix
    used.add(address)
    return address


def _invalid_address(
    rng: random.Random,
    row: dict[str, str],
    used: set[str],
    next_suffix: dict[str, int],
) -> str:
    """Return a malformed address that no other row uses, ignoring case."""
    local = f"{row['_first_local']}.{row['_last_local']}"
    valid = _unique_address(rng, local, used, next_suffix)
    # Reserving a unique valid address first makes each malformed variant of it
    # unique as well. The exceptions are the empty local part and the empty domain,
    # which the loop below checks against the addresses already used.
    valid_local, _, domain = valid.partition("@")
    candidates = _invalid_address_candidates(valid_local, domain)
    rng.shuffle(candidates)
    for candidate in candidates:
        if candidate.lower() not in used:
            used.add(candidate.lower())
            return candidate
    # Unreachable in practice, because the dot-at-the-end variant of a unique valid
    # address is itself unique.
    raise RuntimeError(f"no unused invalid variant of {valid!r}")


def write_csv(path: str | Path, count: int, seed: int) -> None:
    """Write ``count`` contacts from ``generate(count, seed)`` to ``path`` as CSV.

    The file is UTF-8 without a byte order mark, with a header row and ``\\n`` line
    endings. Fields are quoted only where CSV requires it.
    """
    with open(path, "w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=FIELDNAMES, lineterminator="\n")
        writer.writeheader()
        writer.writerows(generate(count, seed))


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Write a deterministic CSV of fictional contacts."
    )
    parser.add_argument(
        "--count",
        type=int,
        default=DEFAULT_COUNT,
        help=f"number of contacts to write (default: {DEFAULT_COUNT})",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=DEFAULT_SEED,
        help=f"seed for the random generator (default: {DEFAULT_SEED})",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help="path of the CSV file to write (default: contacts.csv next to this "
        "script)",
    )
    args = parser.parse_args(argv)
    if args.count < 0:
        parser.error(f"--count must be 0 or more, got {args.count}")
    return args


def main(argv: Sequence[str] | None = None) -> None:
    args = _parse_args(argv)
    started = time.perf_counter()
    write_csv(args.out, args.count, args.seed)
    elapsed = time.perf_counter() - started
    print(
        f"wrote {args.count} contacts to {args.out} in {elapsed:.2f} s",
        file=sys.stderr,
    )


if __name__ == "__main__":
    main()
