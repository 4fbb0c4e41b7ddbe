"""Rebuild `facts.json`: candidate facts written by the project, kept when the embedded model
answers them with its top-1 first token.

    $ python -m tracelab.data.build_facts          # rewrites tracelab/data/facts.json

Each candidate is (relation_id, template, subject, attribute); relation ids are Wikidata's, as in
known_1000 (P36 capital, P17 country, P131 located in, P641 sport, P176 manufacturer, ...).
"""

from __future__ import annotations

import json
from pathlib import Path

TEMPLATES = {
    "P36": "The capital of {} is",
    "P131": "{} is located in the city of",
    "P17": "{} is located in the country of",
    "P30": "{} is located on the continent of",
    "P37": "The official language of {} is",
    "P641": "{} plays the sport of",
    "P176": "{} is produced by",
    "P159": "The headquarters of {} is in",
    "P27": "{} is a citizen of",
    "P106": "{} worked as a",
    "P38": "The currency of {} is the",
    "P495": "{} originated in the country of",
    "P1376": "{} is the capital of",
}

CANDIDATES: dict[str, list[tuple[str, str]]] = {
    "P36": [
        ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
        ("Japan", "Tokyo"), ("Russia", "Moscow"), ("China", "Beijing"), ("Egypt", "Cairo"),
        ("England", "London"), ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Austria", "Vienna"),
        ("Ireland", "Dublin"), ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Poland", "Warsaw"),
        ("Hungary", "Budapest"), ("Thailand", "Bangkok"), ("Kenya", "Nairobi"), ("Peru", "Lima"),
        ("Cuba", "Havana"), ("Iran", "Tehran"), ("Iraq", "Baghdad"), ("Turkey", "Ankara"),
        ("Canada", "Ottawa"), ("Mexico", "Mexico"), ("Argentina", "Buenos"), ("Denmark", "Copenhagen"),
        ("Finland", "Helsinki"), ("Belgium", "Brussels"), ("the Netherlands", "Amsterdam"),
        ("South Korea", "Seoul"), ("India", "New"), ("Scotland", "Edinburgh"), ("Chile", "Santiago"),
        ("Colombia", "Bogot"), ("Vietnam", "Hanoi"), ("Ukraine", "Kiev"), ("the Philippines", "Manila"),
        ("Indonesia", "Jakarta"), ("Nigeria", "Abuja"), ("Australia", "Canberra"),
    ],
    "P131": [
        ("The Eiffel Tower", "Paris"), ("The Colosseum", "Rome"), ("Big Ben", "London"),
        ("The Statue of Liberty", "New"), ("The Brandenburg Gate", "Berlin"), ("The Kremlin", "Moscow"),
        ("The Space Needle", "Seattle"), ("The Golden Gate Bridge", "San"), ("The Louvre", "Paris"),
        ("The Acropolis", "Athens"), ("The Sagrada Familia", "Barcelona"), ("Times Square", "New"),
        ("The Vatican", "Rome"), ("Buckingham Palace", "London"), ("The Forbidden City", "Beijing"),
        ("The Sydney Opera House", "Sydney"), ("Hollywood", "Los"), ("The White House", "Washington"),
        ("The Leaning Tower of Pisa", "Pisa"), ("The Tower of London", "London"),
        ("Central Park", "New"), ("The Alamo", "San"), ("Wall Street", "New"), ("The Pentagon", "Washington"),
    ],
    "P17": [
        ("The Eiffel Tower", "France"), ("Mount Fuji", "Japan"), ("The Great Wall", "China"),
        ("The Taj Mahal", "India"), ("The Colosseum", "Italy"), ("Stonehenge", "England"),
        ("Machu Picchu", "Peru"), ("The Kremlin", "Russia"), ("Toronto", "Canada"), ("Munich", "Germany"),
        ("Barcelona", "Spain"), ("Kyoto", "Japan"), ("Venice", "Italy"), ("Marseille", "France"),
        ("Shanghai", "China"), ("Mumbai", "India"), ("Istanbul", "Turkey"), ("Rio de Janeiro", "Brazil"),
        ("Melbourne", "Australia"), ("Amsterdam", "the"), ("Dublin", "Ireland"), ("Chicago", "the"),
        ("Osaka", "Japan"), ("Naples", "Italy"), ("Lyon", "France"), ("Hamburg", "Germany"),
    ],
    "P30": [
        ("France", "Europe"), ("Brazil", "South"), ("Kenya", "Africa"), ("Japan", "Asia"),
        ("Egypt", "Africa"), ("Germany", "Europe"), ("China", "Asia"), ("Nigeria", "Africa"),
        ("Argentina", "South"), ("India", "Asia"), ("Italy", "Europe"), ("Peru", "South"),
    ],
    "P37": [
        ("France", "French"), ("Germany", "German"), ("Spain", "Spanish"), ("Italy", "Italian"),
        ("Japan", "Japanese"), ("Brazil", "Portuguese"), ("Russia", "Russian"), ("China", "Mandarin"),
        ("Mexico", "Spanish"), ("Portugal", "Portuguese"), ("Greece", "Greek"), ("Poland", "Polish"),
        ("Sweden", "Swedish"), ("Turkey", "Turkish"), ("Argentina", "Spanish"), ("Egypt", "Arabic"),
    ],
    "P641": [
        ("Michael Jordan", "basketball"), ("LeBron James", "basketball"), ("Tiger Woods", "golf"),
        ("Serena Williams", "tennis"), ("Roger Federer", "tennis"), ("Lionel Messi", "soccer"),
        ("Tom Brady", "football"), ("Babe Ruth", "baseball"), ("Wayne Gretzky", "hockey"),
        ("Kobe Bryant", "basketball"), ("Rafael Nadal", "tennis"), ("Cristiano Ronaldo", "soccer"),
        ("Shaquille O'Neal", "basketball"), ("Peyton Manning", "football"), ("Derek Jeter", "baseball"),
        ("Stephen Curry", "basketball"), ("Novak Djokovic", "tennis"), ("Pele", "soccer"),
    ],
    "P176": [
        ("The iPhone", "Apple"), ("Windows", "Microsoft"), ("The Corolla", "Toyota"), ("The Mustang", "Ford"),
        ("The Civic", "Honda"), ("The PlayStation", "Sony"), ("The Xbox", "Microsoft"),
        ("The Galaxy", "Samsung"), ("The Boeing 747", "Boeing"), ("The Model S", "Tesla"),
        ("The Camry", "Toyota"), ("The MacBook", "Apple"), ("The iPad", "Apple"), ("The Prius", "Toyota"),
        ("The Golf", "Volkswagen"), ("The Pixel", "Google"), ("The Kindle", "Amazon"),
    ],
    "P159": [
        ("Microsoft", "Redmond"), ("Apple", "Cupertino"), ("Toyota", "Japan"), ("Google", "Mountain"),
        ("Amazon", "Seattle"), ("Boeing", "Chicago"), ("Volkswagen", "Wolfsburg"), ("Nokia", "Finland"),
        ("Samsung", "Seoul"), ("BMW", "Munich"), ("Sony", "Tokyo"), ("Nintendo", "Kyoto"),
    ],
    "P27": [
        ("Albert Einstein", "Germany"), ("Vladimir Putin", "Russia"), ("Barack Obama", "the"),
        ("Winston Churchill", "the"), ("Napoleon Bonaparte", "France"), ("Angela Merkel", "Germany"),
        ("Mahatma Gandhi", "India"), ("Nelson Mandela", "South"),
    ],
    "P106": [
        ("Albert Einstein", "physicist"), ("William Shakespeare", "playwright"), ("Pablo Picasso", "painter"),
        ("Wolfgang Amadeus Mozart", "composer"), ("Vincent van Gogh", "painter"), ("Charles Dickens", "writer"),
        ("Ludwig van Beethoven", "composer"), ("Isaac Newton", "physicist"), ("Leonardo da Vinci", "painter"),
    ],
    "P38": [
        ("Japan", "yen"), ("the United Kingdom", "pound"), ("India", "rupee"), ("Russia", "ruble"),
        ("China", "yuan"), ("Mexico", "peso"), ("Germany", "euro"), ("the United States", "dollar"),
        ("France", "euro"), ("Italy", "euro"), ("Brazil", "real"), ("South Korea", "won"),
    ],
    "P495": [
        ("Sushi", "Japan"), ("Pizza", "Italy"), ("Tacos", "Mexico"), ("Croissant", "France"),
        ("Kimchi", "Korea"), ("Paella", "Spain"), ("Flamenco", "Spain"), ("Sauerkraut", "Germany"),
    ],
    "P1376": [
        ("Paris", "France"), ("Berlin", "Germany"), ("Tokyo", "Japan"), ("Madrid", "Spain"),
        ("Rome", "Italy"), ("Moscow", "Russia"), ("Cairo", "Egypt"), ("Athens", "Greece"),
        ("Lisbon", "Portugal"), ("Ottawa", "Canada"), ("Beijing", "China"), ("Dublin", "Ireland"),
    ],
}


def build(model=None, limit: int = 100) -> list[dict]:
    """Check every candidate against `model` (default: the embedded one); keep the correct ones,
    at most `limit`, spread over relations (round robin), each with the model's probability."""
    from ..models import load_model

    model = model or load_model()
    kept: dict[str, list[dict]] = {}
    for relation, pairs in CANDIDATES.items():
        template = TEMPLATES[relation]
        for subject, attribute in pairs:
            prompt = template.format(subject)
            first = model.target_ids(prompt, attribute)[0]
            probs = model.next_token_logits(prompt)[0].softmax(-1)
            if int(probs.argmax()) == first:
                kept.setdefault(relation, []).append({
                    "subject": subject, "attribute": attribute, "template": template,
                    "prompt": prompt, "relation_id": relation, "prob": round(float(probs[first]), 4),
                })
    facts: list[dict] = []
    while len(facts) < limit and any(kept.values()):
        for relation in list(kept):
            if kept[relation] and len(facts) < limit:
                facts.append(kept[relation].pop(0))
    for i, fact in enumerate(facts):
        fact["known_id"] = i
    return facts


if __name__ == "__main__":
    facts = build()
    path = Path(__file__).with_name("facts.json")
    path.write_text(json.dumps(facts, indent=1) + "\n")
    print(f"kept {len(facts)} facts -> {path}")
