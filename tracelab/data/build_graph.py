"""Rebuild `graph.json`: the knowledge graph of `tracelab.evaluation.graph`, every fact, alias and
chain checked against a model (default: the embedded one).

    $ python -m tracelab.data.build_graph          # rewrites tracelab/data/graph.json (~1 min on 2 CPUs)

A candidate is kept when the model gives its answer: every token of it is the greedy choice after
the cloze (teacher-forced). Aliases are kept for the relations they are answered with; chains of
2 and 3 hops over kept facts are kept when the model answers the composed cloze. The file's `meta`
counts what was dropped.
"""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

# country: (capital, official language, continent, currency)
COUNTRIES = {
    "France": ("Paris", "French", "Europe", "euro"), "Germany": ("Berlin", "German", "Europe", "euro"),
    "Italy": ("Rome", "Italian", "Europe", "euro"), "Spain": ("Madrid", "Spanish", "Europe", "euro"),
    "Portugal": ("Lisbon", "Portuguese", "Europe", "euro"), "Greece": ("Athens", "Greek", "Europe", "euro"),
    "the United Kingdom": ("London", "English", "Europe", "pound"), "Russia": ("Moscow", "Russian", "Europe", "ruble"),
    "Japan": ("Tokyo", "Japanese", "Asia", "yen"), "China": ("Beijing", "Chinese", "Asia", "yuan"),
    "India": ("New Delhi", "Hindi", "Asia", "rupee"), "Brazil": ("Brasília", "Portuguese", "South America", "real"),
    "Argentina": ("Buenos Aires", "Spanish", "South America", "peso"),
    "Mexico": ("Mexico City", "Spanish", "North America", "peso"),
    "Canada": ("Ottawa", "English", "North America", "dollar"),
    "the United States": ("Washington", "English", "North America", "dollar"),
    "Australia": ("Canberra", "English", "Australia", "dollar"), "Egypt": ("Cairo", "Arabic", "Africa", "pound"),
    "Sweden": ("Stockholm", "Swedish", "Europe", "krona"), "Norway": ("Oslo", "Norwegian", "Europe", "krone"),
    "Poland": ("Warsaw", "Polish", "Europe", "zloty"), "the Netherlands": ("Amsterdam", "Dutch", "Europe", "euro"),
    "South Korea": ("Seoul", "Korean", "Asia", "won"), "Kenya": ("Nairobi", "Swahili", "Africa", "shilling"),
    "Peru": ("Lima", "Spanish", "South America", "sol"), "Austria": ("Vienna", "German", "Europe", "euro"),
    "Ireland": ("Dublin", "Irish", "Europe", "euro"), "Thailand": ("Bangkok", "Thai", "Asia", "baht"),
    "Vietnam": ("Hanoi", "Vietnamese", "Asia", "dong"), "Iran": ("Tehran", "Persian", "Asia", "rial"),
    "Denmark": ("Copenhagen", "Danish", "Europe", "krone"), "Finland": ("Helsinki", "Finnish", "Europe", "euro"),
    "Hungary": ("Budapest", "Hungarian", "Europe", "forint"), "Turkey": ("Ankara", "Turkish", "Asia", "lira"),
    "Switzerland": ("Bern", "German", "Europe", "franc"), "Nigeria": ("Abuja", "English", "Africa", "naira"),
}
# city: country (capitals are cities too)
CITIES = {
    "Lyon": "France", "Marseille": "France", "Nice": "France", "Toulouse": "France", "Munich": "Germany",
    "Hamburg": "Germany", "Frankfurt": "Germany", "Cologne": "Germany", "Bonn": "Germany", "Milan": "Italy",
    "Venice": "Italy", "Naples": "Italy", "Florence": "Italy", "Turin": "Italy", "Pisa": "Italy",
    "Barcelona": "Spain", "Seville": "Spain", "Valencia": "Spain", "Porto": "Portugal", "Manchester": "the United Kingdom",
    "Liverpool": "the United Kingdom", "Edinburgh": "the United Kingdom", "Saint Petersburg": "Russia",
    "Kyoto": "Japan", "Osaka": "Japan", "Shanghai": "China", "Hong Kong": "China", "Mumbai": "India",
    "Rio de Janeiro": "Brazil", "São Paulo": "Brazil", "Toronto": "Canada", "Vancouver": "Canada",
    "Montreal": "Canada", "New York City": "the United States", "Los Angeles": "the United States",
    "Chicago": "the United States", "San Francisco": "the United States", "Seattle": "the United States",
    "Boston": "the United States", "Detroit": "the United States", "Atlanta": "the United States",
    "Honolulu": "the United States", "Sydney": "Australia", "Melbourne": "Australia", "Istanbul": "Turkey",
    "Salzburg": "Austria", "Rotterdam": "the Netherlands", "Alexandria": "Egypt", "Kraków": "Poland",
    "Gothenburg": "Sweden", "Busan": "South Korea", "Stuttgart": "Germany", "Eindhoven": "the Netherlands",
    **{capital: country for country, (capital, *_rest) in COUNTRIES.items()},
}
LANDMARKS = {
    "the Eiffel Tower": "Paris", "the Louvre": "Paris", "the Arc de Triomphe": "Paris", "the Colosseum": "Rome",
    "the Trevi Fountain": "Rome", "Big Ben": "London", "Tower Bridge": "London", "Buckingham Palace": "London",
    "the Brandenburg Gate": "Berlin", "the Kremlin": "Moscow", "Red Square": "Moscow",
    "the Statue of Liberty": "New York City", "the Empire State Building": "New York City",
    "Times Square": "New York City", "Central Park": "New York City", "the Golden Gate Bridge": "San Francisco",
    "the Space Needle": "Seattle", "the Sydney Opera House": "Sydney", "the Sagrada Familia": "Barcelona",
    "the Acropolis": "Athens", "the Parthenon": "Athens", "the Forbidden City": "Beijing", "Hollywood": "Los Angeles",
    "the Leaning Tower of Pisa": "Pisa", "the White House": "Washington", "the Gateway of India": "Mumbai",
    "Christ the Redeemer": "Rio de Janeiro", "the CN Tower": "Toronto", "the Rialto Bridge": "Venice",
    "the Prado Museum": "Madrid", "the Hagia Sophia": "Istanbul", "Tiananmen Square": "Beijing",
    "the Little Mermaid statue": "Copenhagen", "the Tivoli Gardens": "Copenhagen", "the Bund": "Shanghai",
}
COMPANIES = {
    "Microsoft": "Redmond", "Amazon": "Seattle", "Starbucks": "Seattle", "Boeing": "Chicago", "Coca-Cola": "Atlanta",
    "General Motors": "Detroit", "Sony": "Tokyo", "Nintendo": "Kyoto", "BMW": "Munich", "Siemens": "Munich",
    "Samsung": "Seoul", "Fiat": "Turin", "Airbus": "Toulouse", "Heineken": "Amsterdam", "Philips": "Amsterdam",
    "Louis Vuitton": "Paris", "Twitter": "San Francisco", "Uber": "San Francisco", "Goldman Sachs": "New York City",
    "Nokia": "Espoo", "Volvo": "Gothenburg", "Daimler": "Stuttgart", "Porsche": "Stuttgart", "Ikea": "Delft",
    "Gazprom": "Saint Petersburg", "Alibaba": "Hangzhou", "Toyota": "Toyota City", "Nestlé": "Vevey",
}
# person: (birth city, country of citizenship)
PEOPLE = {
    "Wolfgang Amadeus Mozart": ("Salzburg", "Austria"), "Ludwig van Beethoven": ("Bonn", "Germany"),
    "Albert Einstein": ("Ulm", "Germany"), "Pablo Picasso": ("Málaga", "Spain"),
    "Barack Obama": ("Honolulu", "the United States"), "Donald Trump": ("New York City", "the United States"),
    "Frida Kahlo": ("Mexico City", "Mexico"), "Dante Alighieri": ("Florence", "Italy"),
    "Marie Curie": ("Warsaw", "Poland"), "Charlie Chaplin": ("London", "the United Kingdom"),
    "Alfred Hitchcock": ("London", "the United Kingdom"), "Lionel Messi": ("Rosario", "Argentina"),
    "Bill Gates": ("Seattle", "the United States"), "Steve Jobs": ("San Francisco", "the United States"),
    "Antonio Vivaldi": ("Venice", "Italy"), "Galileo Galilei": ("Pisa", "Italy"), "Karl Marx": ("Trier", "Germany"),
    "Franz Kafka": ("Prague", "Austria"), "Fyodor Dostoevsky": ("Moscow", "Russia"),
    "Hans Christian Andersen": ("Odense", "Denmark"), "Vincent van Gogh": ("Zundert", "the Netherlands"),
    "Sigmund Freud": ("Příbor", "Austria"), "Johann Sebastian Bach": ("Eisenach", "Germany"),
    "Richard Wagner": ("Leipzig", "Germany"), "Victor Hugo": ("Besançon", "France"),
    "Claude Monet": ("Paris", "France"), "Elvis Presley": ("Tupelo", "the United States"),
    "Kim Jong-un": ("Pyongyang", "North Korea"), "Akira Kurosawa": ("Tokyo", "Japan"),
    "Jorge Luis Borges": ("Buenos Aires", "Argentina"), "Miguel de Cervantes": ("Alcalá de Henares", "Spain"),
    "Leo Tolstoy": ("Yasnaya Polyana", "Russia"), "Frédéric Chopin": ("Żelazowa Wola", "Poland"),
}
ALIASES = {
    "the United States": ["the USA", "America", "the United States of America"],
    "the United Kingdom": ["the UK", "Britain", "Great Britain"], "the Netherlands": ["Holland"],
    "New York City": ["New York", "NYC"], "France": ["the French Republic"], "Germany": ["the Federal Republic of Germany"],
    "Russia": ["the Russian Federation"], "China": ["the People's Republic of China"],
    "Beijing": ["Peking"], "Mumbai": ["Bombay"], "Saint Petersburg": ["St. Petersburg"],
    "the Louvre": ["the Louvre Museum"], "Big Ben": ["the Elizabeth Tower"], "Microsoft": ["Microsoft Corporation"],
    "Coca-Cola": ["The Coca-Cola Company"], "Albert Einstein": ["Einstein"], "Wolfgang Amadeus Mozart": ["Mozart"],
    "Ludwig van Beethoven": ["Beethoven"], "Pablo Picasso": ["Picasso"], "Barack Obama": ["Obama"],
    "Marie Curie": ["Madame Curie"], "Karl Marx": ["Marx"], "Vincent van Gogh": ["Van Gogh"],
}


def candidates() -> tuple[dict[tuple[str, str], str], dict[str, str]]:
    """Every candidate fact `{(subject, relation): object}` and the kinds of the entities."""
    facts, types = {}, {}
    for country, (capital, language, continent, currency) in COUNTRIES.items():
        facts |= {(country, "P36"): capital, (capital, "P1376"): country, (country, "P37"): language,
                  (country, "P30"): continent, (country, "P38"): currency}
        types |= {country: "country", language: "language", continent: "continent", currency: "currency"}
    for city, country in CITIES.items():
        facts[(city, "P17")] = country
        types[city] = "city"
    for landmark, city in LANDMARKS.items():
        facts[(landmark, "P131")] = city
        types[landmark] = "landmark"
    for company, city in COMPANIES.items():
        facts[(company, "P159")] = city
        types[company] = "company"
        types.setdefault(city, "city")
    for person, (city, country) in PEOPLE.items():
        facts |= {(person, "P19"): city, (person, "P27"): country}
        types[person] = "person"
        types.setdefault(city, "city")
        types.setdefault(country, "country")
    return facts, types


def build(model=None) -> dict:
    """The checked graph as the JSON `graph.json` holds (see the module doc)."""
    from ..evaluation.graph import RELATIONS, KnowledgeGraph, chain_prompt, fill
    from ..evaluation.metrics import gives
    from ..models import load_model

    t0 = time.perf_counter()
    model = model or load_model()
    facts, types = candidates()
    items = sorted(facts.items())
    known = gives(model, [(fill(RELATIONS[r].template, s), (o,)) for (s, r), o in items])
    kept = {k: o for (k, o), ok in zip(items, known) if ok}

    alias_pairs = [(entity, alias, r, fill(RELATIONS[r].template, alias), o) for entity, names in ALIASES.items()
                   for alias in names for (s, r), o in sorted(kept.items()) if s == entity]
    aliases: dict[str, dict[str, list[str]]] = {}
    for (entity, alias, r, _, _), ok in zip(alias_pairs, gives(model, [(p, (o,)) for *_, p, o in alias_pairs])):
        if ok:
            aliases.setdefault(entity, {}).setdefault(alias, []).append(r)

    graph = KnowledgeGraph(kept, types, aliases)
    chains = []
    for head in sorted({s for s, _ in kept}):
        for n in (2, 3):
            for relations in itertools.product(sorted(RELATIONS), repeat=n):
                path = graph.path(head, relations)
                if path is not None and len(set(path)) == len(path):  # no chain that comes back
                    chains.append((head, relations, path[-1]))
    chain_known = gives(model, [(chain_prompt(h, rs), (end,)) for h, rs, end in chains])
    graph.chains = [(h, rs) for (h, rs, _), ok in zip(chains, chain_known) if ok]
    meta = {"model": model.name, "built": time.strftime("%Y-%m-%d"), "seconds": round(time.perf_counter() - t0, 1),
            "check": "every answer token is the model's greedy choice after the cloze (teacher-forced)",
            "facts": {"candidates": len(facts), "kept": len(kept)},
            "aliases": {"candidates": len(alias_pairs), "kept": sum(len(v) for a in aliases.values() for v in a.values())},
            "chains": {"candidates": len(chains), "kept": len(graph.chains),
                       "kept_2_hops": sum(len(rs) == 2 for _, rs in graph.chains),
                       "kept_3_hops": sum(len(rs) == 3 for _, rs in graph.chains)}}
    return graph.to_json(meta)


if __name__ == "__main__":
    data = build()
    path = Path(__file__).with_name("graph.json")
    path.write_text(json.dumps(data, indent=0, ensure_ascii=False) + "\n")
    print(f"{path}: {json.dumps(data['meta'], indent=1)}")
