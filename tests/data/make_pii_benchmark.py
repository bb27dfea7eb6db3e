"""Writes tests/data/pii_benchmark.jsonl (run from the repository root): hand-written sentences with labelled PII
spans (card and IBAN numbers get valid checksums from a seeded generator) and hard negatives by category."""

import json
import random

rng = random.Random(21)


def luhn_complete(prefix, length):
    while True:
        body = prefix + "".join(str(rng.randint(0, 9)) for _ in range(length - len(prefix) - 1))
        total = 0
        for i, ch in enumerate(reversed(body + "0")):
            d = int(ch)
            if i % 2 == 1:
                d = d * 2 - 9 if d > 4 else d * 2
            total += d
        return body + str((10 - total % 10) % 10)


def iban(country, bban):
    moved = bban + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    return f"{country}{check:02d}{bban}"


def grouped(s, sizes, sep=" "):
    out, i = [], 0
    for n in sizes:
        out.append(s[i : i + n])
        i += n
    if i < len(s):
        out.append(s[i:])
    return sep.join(out)


rows = []


def pos(text, *spans, note=""):
    for _, t in spans:
        assert t in text, (t, text)
    rows.append({"text": text, "pii": [{"kind": k, "text": t} for k, t in spans], "note": note})


def neg(text, note):
    rows.append({"text": text, "pii": [], "note": note})


# ---------------------------------------------------------------- emails
emails = [
    "maria.garcia@example.com",
    "j.smith+newsletter@mail.example.org",
    "dev-team@startup.io",
    "o'neil@example.ie".replace("'", ""),
    "li.wei@uni.example.edu.cn",
    "support@shop.example.co.uk",
    "a.b.c@sub.domain.example.net",
    "first_last@example.de",
    "hello@example.fr",
    "noreply@notifications.example.com",
    "k.yamamoto@example.jp",
    "user123@example.com",
    "anna-lena.schmidt@example.at",
    "info@cafe-example.it",
    "sales.team@example-corp.com",
    "x@example.io",
    "priya.n@example.in",
    "tom.o.brien@example.ie",
    "juan.perez@correo.example.es",
    "admin@localhost.example",
    "r2d2@droids.example.org",
    "marketing+q3@example.com",
    "ceo@example.co",
    "helpdesk@it.example.edu",
    "sam@example.app",
]
tmpl = [
    "Please email {} if you have questions.",
    "Contact: {}",
    "Send the invoice to {} by Friday.",
    "My address is {}, write anytime.",
    "CC {} on the thread.",
    "Reply to <{}> with the form.",
    "You can reach the team at {}.",
]
for i, e in enumerate(emails):
    pos(tmpl[i % len(tmpl)].format(e), ("email", e))

# ---------------------------------------------------------------- phones
phones = [
    "(212) 555-0187",
    "212-555-0143",
    "212.555.0199",
    "+1 212 555 0111",
    "+1-415-555-0132",
    "+44 20 7946 0321",
    "020 7946 0958",
    "07700 900461",
    "+49 30 12345678",
    "030 12345678",
    "+33 1 42 68 53 00",
    "01 42 68 53 00",
    "+61 2 9374 4000",
    "+91 98765 43210",
    "98765 43210",
    "+81 3-1234-5678",
    "03-1234-5678",
    "+34 912 345 678",
    "+39 06 1234 5678",
    "+31 20 123 4567",
    "+353 1 234 5678",
    "0161 496 0000",
    "+1 (646) 555-0175",
    "4155550132",
    "555-0100",
]
tmpl = [
    "Call me at {} after six.",
    "Phone: {}",
    "Our office number is {}.",
    "Text {} when you arrive.",
    "Tel. {} (mornings)",
    "For bookings ring {}.",
    "You can reach her on {}.",
]
for i, p in enumerate(phones):
    pos(
        tmpl[i % len(tmpl)].format(p),
        ("phone", p),
        note="no separators, no trunk 0" if p == "4155550132" else "7-digit local" if p == "555-0100" else "",
    )

# ---------------------------------------------------------------- cards
brands = [
    ("4", 16),
    ("4", 16),
    ("51", 16),
    ("55", 16),
    ("2221", 16),
    ("34", 15),
    ("37", 15),
    ("6011", 16),
    ("65", 16),
    ("3528", 16),
    ("36", 14),
    ("62", 16),
    ("4", 13),
    ("4", 19),
    ("53", 16),
    ("4", 16),
    ("52", 16),
    ("37", 15),
    ("6011", 16),
    ("4", 16),
    ("54", 16),
    ("35", 16),
    ("4", 16),
    ("51", 16),
    ("4", 16),
]
tmpl = [
    "Charge it to card {} please.",
    "My Visa is {} exp 09/27.",
    "card number: {}",
    "I paid with {} yesterday.",
    "Use {} for the deposit.",
    "The card ending in 1111 is not {}.",
    "billing card {} (CVV on file)",
]
for i, (pre, n) in enumerate(brands):
    num = luhn_complete(pre, n)
    if n == 16:
        shown = grouped(num, [4, 4, 4, 4], [" ", "-", ""][i % 3])
    elif n == 15:
        shown = grouped(num, [4, 6, 5]) if i % 2 else num
    elif n == 14:
        shown = grouped(num, [4, 6, 4])
    else:
        shown = num
    pos(tmpl[i % len(tmpl)].format(shown), ("card", shown))

# ---------------------------------------------------------------- IBANs
countries = [
    ("DE", "370400440532013000"),
    ("GB", "WEST12345698765432"),
    ("FR", "20041010050500013M02606"),
    ("ES", "21000418450200051332"),
    ("IT", "X0542811101000000123456"),
    ("NL", "ABNA0417164300"),
    ("BE", "539007547034"),
    ("CH", "00762011623852957"),
    ("AT", "1904300234573201"),
    ("PL", "109010140000071219812874"),
    ("SE", "50000000058398257466"),
    ("DK", "00400440116243"),
    ("FI", "12345600000785"),
    ("NO", "86011117947"),
    ("IE", "AIBK93115212345678"),
    ("PT", "000201231234567890154"),
    ("LU", "0019400644750000"),
    ("CZ", "08000000192000145399"),
    ("HU", "117730161111101800000000"),
    ("RO", "AAAA1B31007593840000"),
    ("DE", "500105175407324931"),
    ("GB", "NWBK60161331926819"),
    ("FR", "30006000011234567890189"),
    ("NL", "RABO0123456789"),
    ("ES", "00491500051234567892"),
]
tmpl = [
    "Transfer to IBAN {} by Monday.",
    "IBAN: {}",
    "Please wire the refund to {}.",
    "My account is {}, BIC on request.",
    "Bank details: {} (Sparkasse)",
]
for i, (c, b) in enumerate(countries):
    code = iban(c, b)
    shown = grouped(code, [4] * 8) if i % 2 == 0 else code
    pos(tmpl[i % len(tmpl)].format(shown), ("iban", shown))

# ---------------------------------------------------------------- IPs
ips = [
    "192.168.1.10",
    "10.0.0.7",
    "172.16.254.1",
    "8.8.8.8",
    "203.0.113.45",
    "198.51.100.23",
    "127.0.0.1",
    "100.64.0.12",
    "2001:db8::8a2e:370:7334",
    "fe80::1ff:fe23:4567:890a",
    "::1",
    "2001:0db8:85a3:0000:0000:8a2e:0370:7334",
    "93.184.216.34",
    "52.14.200.1",
    "185.199.108.153",
    "1.1.1.1",
    "192.0.2.146",
    "2606:4700:4700::1111",
    "240.10.20.30",
    "11.22.33.44",
    "169.254.169.254",
    "64.233.160.0",
    "2001:db8:1::ab9:c0a8:102",
    "81.2.69.142",
    "77.88.8.8",
]
tmpl = [
    "The server at {} stopped answering.",
    "Login from {} was blocked.",
    "ssh admin@{}".replace("admin@", "admin at "),
    "IP: {}",
    "Requests came from {} overnight.",
    "Set the DNS to {}.",
]
for i, a in enumerate(ips):
    pos(tmpl[i % len(tmpl)].format(a), ("ip", a))


# ---------------------------------------------------------------- secrets
def rnd(chars, n):
    return "".join(rng.choice(chars) for _ in range(n))


AN = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
UP = "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
secrets = [
    "AKIA" + rnd(UP, 16),
    "AKIA" + rnd(UP, 16),
    "ASIA" + rnd(UP, 16),
    "ghp_" + rnd(AN, 36),
    "gho_" + rnd(AN, 36),
    "github_pat_11" + rnd(AN, 20) + "_" + rnd(AN, 30),
    "sk-proj-" + rnd(AN, 40),
    "sk-" + rnd(AN, 48),
    "sk-ant-" + rnd(AN, 40),
    "xoxb-" + rnd("0123456789", 12) + "-" + rnd(AN, 24),
    "xoxp-" + rnd("0123456789", 12) + "-" + rnd(AN, 20),
    "AIza" + rnd(AN + "_-", 35),
    "AIza" + rnd(AN, 35),
]
tmpl = ["export KEY={}", "The token {} leaked in the logs.", "use {} for the demo", "credentials: {}"]
for i, sct in enumerate(secrets):
    pos(tmpl[i % len(tmpl)].format(sct), ("secret", sct))
for i in range(8):
    v = rnd(AN, 24)
    key = ["api_key", "secret", "access_token", "client_secret", "password", "auth_token", "apikey", "token"][i]
    pos(f'{key} = "{v}"', ("secret", v))
for _ in range(3):
    v = "eyJ" + rnd(AN, 30) + "." + rnd(AN, 20)
    pos(f"Authorization: Bearer {v}", ("secret", v))
pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\n-----END PRIVATE KEY-----"
pos(f"key file:\n{pem}\n", ("secret", pem))

# ---------------------------------------------------------------- addresses
addresses = [
    "742 Evergreen Terrace",
    "1600 Amphitheatre Parkway, Mountain View, CA 94043",
    "221B Baker Street",
    "10 Downing Street",
    "350 Fifth Avenue, New York, NY 10118",
    "1 Infinite Loop, Cupertino, CA 95014",
    "4059 Mt Lee Dr",
    "31 Spooner Street",
    "12 Grimmauld Place",
    "1313 Mockingbird Lane",
    "500 S Buena Vista St",
    "77 Massachusetts Ave, Cambridge, MA 02139",
    "8 Elm Street, Apt 4B",
    "2 Old Mill Road",
    "45 Rockefeller Plaza",
    "100 Universal City Plaza",
    "27 Kings Road, Suite 200",
    "9 Riverside Drive",
    "160 Oak Lane, Springfield, IL 62704",
    "3 Abbey Road",
    "Flat 2, 14 Rue de Rivoli",
    "Calle Mayor 5, Madrid",
    "Hauptstraße 12, Berlin",
    "PO Box 1234",
    "23 Harbour Court",
]
tmpl = [
    "Ship it to {}.",
    "She lives at {} now.",
    "Our new office: {}",
    "The party is at {} on Saturday.",
    "Return address: {}",
]
for i, a in enumerate(addresses):
    pos(tmpl[i % len(tmpl)].format(a), ("address", a))

# ---------------------------------------------------------------- names
names = [
    ("Dr. Ada Lovelace", "Ada Lovelace"),
    ("Mr. John Smith", "John Smith"),
    ("Mrs. Priya Natarajan", "Priya Natarajan"),
    ("Ms. Chen", "Chen"),
    ("Prof. Hans Müller", "Hans Müller"),
    ("Sir Patrick Stewart", "Patrick Stewart"),
    ("Dr Maria Garcia", "Maria Garcia"),
    ("Mr. O'Brien", "O'Brien"),
    ("Ms. Anna-Lena Schmidt", "Anna-Lena Schmidt"),
    ("Mx. Jordan Lee", "Jordan Lee"),
]
for i, (shown, name) in enumerate(names):
    pos(
        ["{} will see you now.", "Please thank {} for the report.", "The letter was signed by {}."][i % 3].format(
            shown
        ),
        ("name", name),
    )
for n in ["Tom Hanks", "Amelia Earhart", "Kenji Watanabe", "Fatima Zahra", "Olu Adeyemi"]:
    pos(f"Hi, my name is {n} and I need help with my order.", ("name", n))
for n in ["Laura Bianchi", "Pedro Alvarez", "Sofia Novak"]:
    pos(f"Name: {n}\nCity: Springfield", ("name", n))
for n in ["Maria Lopez", "David Kim", "Ahmed Hassan", "Emily Watson", "Lucas Martin", "Yuki Tanaka", "Grace Okafor"]:
    pos(
        f"Yesterday {n} called about the refund.",
        ("name", n),
        note="no marker: rules miss it (the NER backend finds it)",
    )

# ---------------------------------------------------------------- mixed
pos(
    "Hi, I'm Dr. Sam Ortiz, call (617) 555-0123 or mail sam.ortiz@example.com.",
    ("name", "Sam Ortiz"),
    ("phone", "(617) 555-0123"),
    ("email", "sam.ortiz@example.com"),
)
pos(
    "Send the card 4111 1111 1111 1111 receipt to 12 Elm Street, Springfield.",
    ("card", "4111 1111 1111 1111"),
    ("address", "12 Elm Street, Springfield"),
)

# ================================================================ hard negatives
for t in [
    "She had $100. She spent 100-50-30-15 = 5 dollars left?",
    "Compute 250-75-25-10 = 140.",
    "Answer: 1200-340-56-4 = 800",
    "3,600-1,200-900-450 = 1,050",
    "So 14,000-3,920-1,000 = 9,080 remain.",
    "x = 555 - 123 - 4567",
    "The total is 12*34+560 = 968.",
    "Subtract: 9000-2500-1500-1000 = 4000",
    "It works out as 480/2/3/4 = 20.",
    "Step 2: 72-12-12-12 = 36 cookies",
    "He sold 40-15-10-5 = 10 apples in the end.",
    "Then 100+200+300+400 = 1000 points.",
    "Result: 2500-1250-625 = 625",
    "Calculate 865-123-456 = 286.",
    "We get 3x + 2 = 14, so x = 4.",
    "Now 1,000-250-125 = 625 grams are left.",
    "20-3-4-5 = 8 students stayed.",
    "Their ages: 60-30-15 = 15 years difference.",
]:
    neg(t, "arithmetic")
for t in [
    "Revenue was 14,000-3,920-1,000 in the three quarters.",
    "The population is 8 336 817.",
    "Die Stadt hat 1.234.567 Einwohner.",
    "It costs $1,250,000.",
    "The limit is 2,147,483,647.",
    "They raised €12.500.000 in 2021.",
    "Around 7 900 000 000 people.",
    "Budget: 1,200,000 - 350,000 - 125,000",
    "Scores 1,234,567,890 and 987,654,321.",
    "We shipped 4 500 000 units.",
]:
    neg(t, "thousands separators")
for t in [
    "The meeting is on 2023-10-05 at 14:30.",
    "Born 05/10/1987 in Ohio.",
    "Due 10.05.2023.",
    "From 1999-2004 he lived abroad.",
    "Logged 2023/10/05 14:30:22.",
    "Between 2019 2020 2021 sales grew.",
    "Dates: 2021-01-15, 2022-02-16, 2023-03-17.",
    "Season 2022-2023 was long.",
    "Timestamp 20231005143022.",
    "It ran from 01.01.2020 to 31.12.2021.",
]:
    neg(t, "dates")
for t in [
    "Upgrade to v1.2.3.4 today.",
    "Windows version 10.0.19041.1",
    "Python 3.11.4 is required.",
    "firmware 2.1.0.17 fixes it",
    "build 22.04.3.1 failed",
    "Released as version 4.2.1.0.",
    "Chrome 118.0.5993.88 is out.",
    "ver. 6.0.0.1 notes",
    "Kernel 5.15.0.91 booted.",
    "Use release 192.168.0.1 of the schema? No: release 1.0.0.2.",
]:
    neg(t, "versions")
for t in [
    "Meet at 40.7128, -74.0060 tomorrow.",
    "Paris is at 48.8566° N, 2.3522° E.",
    "Sydney: -33.8688, 151.2093",
    "lat 51.5074, lon -0.1278",
    "GPS 37.7749 -122.4194",
    "The wreck lies at 41.7325, -49.9469.",
    "Coordinates (35.6762, 139.6503)",
    "Drop pin 52.5200, 13.4050 here.",
    "At -22.9068, -43.1729 we camped.",
    "Point 55.7558 37.6173 marked.",
]:
    neg(t, "coordinates")
for t in [
    "See https://example.com/orders/4111111111111111/status",
    "Open https://maps.example.com/@40.7128,-74.0060,15z",
    "Item: http://shop.example.org/item/555-123-4567-blue",
    "Docs at https://example.com/v2/12345678901/ref",
    "Link https://example.com/track?id=4532015112830366",
    "www.example.com/p/020-7946-0958-x",
    "https://example.org/archive/2023/10/05/report-8812-77-1",
    "https://cdn.example.com/img/1234-5678-9012-3456.png",
    "Watch https://video.example.com/watch?v=12345678901",
    "https://example.com/users/98765-43210/profile",
]:
    neg(t, "digits inside URLs")
for t in [
    "Ticket 13728057-1 was closed.",
    "Record 20231005-0042 updated.",
    "Case 8812-77-1 reopened.",
    "ISBN 978-3-16-148410-0",
    "ISBN 0-306-40615-2 in stock",
    "Order #100234567 shipped.",
    "DOI 10.1000/182",
    "Part no. 1234-5678-90",
    "Invoice INV-2023-000123",
    "Student ID 2019-123456",
    "Ref 12-34-56-78-90",
    "Tracking 1Z999AA10123456784",
    "Serial 1234567812345678",
    "Account 00012345",
    "Patent US 7,654,321 B2",
    "Claim 4412-3344-55",
    "Batch 7788-12-03-4",
    "Employee #004512",
    "Room 1204, floor 12",
    "Flight BA 0283 boards at 9.",
]:
    neg(t, "ids and numbers")
for t in [
    "The score was 21-17 at half time.",
    "Countdown 3-2-1 go!",
    "Ratio 16:9 and 4:3.",
    "Time 12:30:45.",
    "Temperature fell to -12.5 degrees.",
    "Pages 123-145 and 200-210.",
    "A 3-4-3 formation.",
    "Scale 1:50000.",
    "Between 10-20-30 percent.",
    "Lottery numbers 07 12 23 34 41 45",
    "Sizes 38-40-42-44",
    "PIN 1234 is a bad idea.",
]:
    neg(t, "scores, times, measures")
for t in [
    "api_key=YOUR_API_KEY_HERE",
    "password: ********",
    "token=<your-token-here>",
    "secret = 'changeme'",
    "Set OPENAI_API_KEY to your key.",
    "Bearer <token>",
    "api_key: xxxxxxxxxxxxxxxxxxxx",
    "Use sk-learn, not sk-... placeholders.",
    "AKIA followed by 16 characters is an AWS key id.",
    "export TOKEN=$TOKEN",
]:
    neg(t, "secret placeholders")
for t in [
    "In 2019 Wall Street fell sharply.",
    "Take Route 66 west.",
    "Since 1990 Main Street has changed.",
    "Over 200 Oak trees grow there.",
    "Chapter 12 Baker Street Irregulars",
    "By 2025 Park Avenue prices doubled.",
    "Highway 101 is closed.",
    "About 30 Elm trees were cut.",
]:
    neg(t, "address look-alikes")
for t in [
    "Dr. Pepper is my favourite drink.",
    "Mr. Clean removes stains.",
    "The doctor said rest.",
    "My name is not important.",
    "Name: (leave blank)",
    "Dear customer, thanks.",
    "Ask Alexa to play music.",
    "The Ms. magazine archive.",
]:
    neg(t, "name look-alikes")
for t in [
    "Email support at example dot com.",
    "user at example.com",
    "@handle on social",
    "foo@bar",
    "Write to me.",
    "Card ending 4242.",
    "IBAN GB82 WEST 1234 5698 7654 33 has a bad checksum",
    "999.1.1.1 is not an address",
    "card 4111 1111 1111 1112 fails Luhn",
    "0000 0000 0000 0000",
    "Visa 4111-11111-1111-111 typed wrong",
]:
    neg(t, "near misses")
for t in [
    "1 234 567 890 is a big number.",
    "Call 911 now!",
    "Dial 112 in Europe.",
    "Press 0 for an operator.",
    "It took 45 minutes.",
    "Model T-800 and R2-D2.",
    "We need 3 4x4 trucks.",
    "Codes 123 456 789 were printed.",
]:
    neg(t, "phone look-alikes")

for t in [
    "It costs $1999.99 or 3 x $699.",
    "Price: 1 299,00 EUR",
    "Weight 12.345 kg, 0.5 mm",
    "Pay 250.00 - 50.00 - 25.00 today.",
    "Stock fell 3.5% to 142.37.",
    "Orders: 120, 340, 560, 780, 900",
    "Batch of 1000-2000-3000 units",
    "Total 5 000 000 yen",
    "GDP grew 2.1% to 25,462,700 million",
    "Mileage 123456 km",
]:
    neg(t, "prices and quantities")

with open("tests/data/pii_benchmark.jsonl", "w", encoding="utf-8") as f:
    for r in rows:
        f.write(json.dumps(r, ensure_ascii=False) + "\n")
pos_n = sum(len(r["pii"]) for r in rows)
print(len(rows), "rows;", pos_n, "positives;", sum(1 for r in rows if not r["pii"]), "negatives")
