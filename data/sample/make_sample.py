#!/usr/bin/env python3
"""Build the chatbatch sample data sets (deterministic; re-run to rebuild).

    python data/sample/make_sample.py            # writes next to this file

Writes
  reviews.csv      200 product reviews, pandas ``to_csv(index=False)`` (standard
                   minimal quoting, UTF-8, ``\\n`` line endings)
  reviews.parquet  same rows; review_id int64, rating nullable Int64, rest strings
  tickets.jsonl    40 support tickets: ticket_id, subject, body, messages
                   (system + user chat messages asking to route the ticket)

Columns of reviews: review_id (1..N), product, rating (1-5 or empty), review,
country (ISO 3166 alpha-2), date (YYYY-MM-DD string).

Ordinary reviews are composed from hand-written sentence pools (per product,
per category and generic) with a seeded RNG; the awkward cases real data has
are hand-written rows at fixed review_ids (see ``SPECIAL`` below, each tagged):

  quotes      4 19 42 55 58 111 133 148 176 (+ the product name  Lodge 10.25" ...)
  commas      27 55 111 176 (and most multi-sentence reviews; 3 product names)
  newlines    11 46 55 87(CRLF) 111 151 176 190 (+ generated 2-paragraph and
              Pros/Cons reviews)
  non_ascii   8 15 23 31 36 54 55 63 69 77 92 101 109 120 125 144 160 171 182
              (de: 8 63 120, fr: 15 92 171, es: 23 101 144, ja: 31 77 160,
               it: 109, emoji: 36 69 125 182, accents in English: 54 55)
  null        13 50 99 166   (review missing -> skipped rows; 166 has no rating either)
  whitespace  39 117 188     (review is only whitespace)
  braces      42 73 139 195  ({"size": "M"}, {curly}, {title}, {{ ... }})
  long        55 111 176     (~2,000 characters, multi-paragraph)
  padded      6 81 128 190   (leading and/or trailing spaces)
  mismatch    96 148         (sentiment disagrees with the star rating)
  no rating   29 84 157 166 199

Tickets: TCK-1036 has an empty messages list; TCK-1032 body null; TCK-1033
body whitespace only; TCK-1034 ~2,200-char body with pasted JSON/stack trace;
braces in 1023 1024 1034 (and the router system prompt itself contains
{"team": "shipping"}); non-ASCII 1017 1027-1031 1038; padded subject/body 1035.

Note for readers: an empty review cell is the only "null" a CSV can express.
``pandas.read_csv`` returns it as NaN; ``pyarrow.csv.read_csv`` returns "" for
string columns unless ``ConvertOptions(strings_can_be_null=True)`` is given, and
infers ``date`` as date32 unless told otherwise.
"""
from __future__ import annotations

import json
import random
from datetime import date, timedelta
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

SEED = 20250517
PARQUET_SCHEMA = pa.schema([
    ("review_id", pa.int64()), ("product", pa.string()), ("rating", pa.int64()),
    ("review", pa.string()), ("country", pa.string()), ("date", pa.string()),
])
N_REVIEWS = 200
HERE = Path(__file__).resolve().parent

# --------------------------------------------------------------------------
# Products: name -> (category, positive details, negative details, neutral)
# --------------------------------------------------------------------------
PRODUCTS: dict[str, tuple[str, list[str], list[str], list[str]]] = {
    "AeroPress Go Travel Coffee Maker": ("kitchen", [
        "Makes a smooth, rich cup with none of the bitterness I get from my French press.",
        "The whole kit packs into the mug, which is brilliant for travel.",
        "Cleanup takes about ten seconds: you just pop the puck into the bin.",
        "I've taken it camping twice and it survived being thrown around in my pack.",
    ], [
        "The plastic mug that comes with it feels cheap and started to smell of coffee after a month.",
        "It only makes one cup at a time, so it's useless when we have guests.",
        "The rubber seal on my plunger tore after about four months.",
    ], [
        "There's a bit of a learning curve with grind size and steep time.",
        "You'll need a separate kettle, obviously.",
    ]),
    'Lodge 10.25" Cast Iron Skillet': ("kitchen", [
        "Sears a steak better than any pan I've owned.",
        "After a few rounds of seasoning it's practically non-stick.",
        "This thing will outlive me.",
        "Goes from stovetop to oven without a second thought.",
    ], [
        "It arrived with rough patches in the seasoning and a couple of rust spots on the base.",
        "Way heavier than I expected; my wife can't lift it one-handed.",
        "The handle gets dangerously hot, so keep a mitt nearby.",
    ], [
        "The factory seasoning is thin, so plan on re-seasoning it yourself.",
        "You can't just throw it in the dishwasher.",
    ]),
    "OXO Good Grips 3-Piece Mixing Bowl Set": ("kitchen", [
        "The non-slip bottoms actually work; the bowl stays put while I whisk.",
        "They nest together neatly and take up almost no cupboard space.",
        "Pour spouts are a small detail that make a big difference.",
    ], [
        "The smallest bowl is almost too small to be useful.",
        "Mine came with a crack in the large bowl.",
        "The white finish stained orange after one batch of tomato sauce.",
    ], [
        "They're plastic, not stainless, so don't expect them to feel premium.",
    ]),
    "Instant Pot Duo 7-in-1 Electric Pressure Cooker, 6 Qt": ("kitchen", [
        "Dried beans to dinner in under an hour, no soaking.",
        "Makes the best rice I've ever cooked, and I don't have to watch it.",
        "I use the yogurt function every week now.",
        "The stainless inner pot is easy to clean.",
    ], [
        "The sealing ring holds onto smells, so my cheesecake tasted faintly of chili.",
        "Mine started throwing a burn error on almost every recipe after six months.",
        "The manual is confusing and half the buttons I never use.",
    ], [
        "Recipes online say 30 minutes but never count the time it takes to come up to pressure.",
    ]),
    "Anker PowerCore 10000 Portable Charger": ("electronics", [
        "Charges my phone about two and a half times before it needs topping up.",
        "Small enough to slip into a jeans pocket.",
        "Still holding a good charge after a year of daily use.",
    ], [
        "It takes forever to recharge the bank itself. Overnight, basically.",
        "The four-dot battery indicator is vague, so I never know how much is left.",
        "No USB-C input on the version I received, which feels dated.",
    ], [
        "Gets a little warm when charging, but nothing alarming.",
    ]),
    "Sony WH-1000XM5 Wireless Headphones": ("electronics", [
        "The noise cancelling is unreal; the plane engine basically disappears.",
        "Comfortable enough to wear for a full workday.",
        "Battery lasted an entire week of commuting on one charge.",
        "Call quality is much better than my old pair.",
    ], [
        "They don't fold anymore, so the case is huge.",
        "The touch controls trigger every time I adjust my hair.",
        "For this price, the creaking headband is unacceptable.",
    ], [
        "The app is cluttered but you only need it once to set things up.",
    ]),
    "Kindle Paperwhite (16 GB)": ("electronics", [
        "The warm light setting is so much easier on the eyes at night.",
        "Battery lasts weeks, not days.",
        "Light enough to hold one-handed in bed.",
        "Being waterproof means I finally read in the bath without worrying.",
    ], [
        "Page turns occasionally lag, and it froze completely twice.",
        "The lock screen ads are annoying and it costs extra to remove them.",
        "Reading PDFs on it is a miserable experience.",
    ], [
        "It's basically the same as my previous Paperwhite with a slightly bigger screen.",
    ]),
    "Logitech MX Master 3S Mouse": ("electronics", [
        "The scroll wheel is addictive and flies through long spreadsheets.",
        "Switching between my laptop and desktop with one button is a game changer.",
        "The quiet clicks are a nice touch in a shared office.",
    ], [
        "Too big for my hand; my wrist ached after a day.",
        "The Logi Options+ software keeps asking me to log in.",
        "Bluetooth drops out randomly on my Mac.",
    ], [
        "It's heavy compared with a travel mouse.",
    ]),
    "JBL Flip 6 Bluetooth Speaker": ("electronics", [
        "Surprisingly loud for its size, and the bass holds up.",
        "Dropped it in the pool and it kept playing.",
        "Pairs instantly every time.",
    ], [
        "Sound gets harsh and distorted at full volume.",
        "No aux input, so my old iPod is out of luck.",
        "Battery life is well short of the advertised 12 hours.",
    ], [
        "It comes in a lot of colours; I went with the teal.",
    ]),
    "Project Hail Mary by Andy Weir (Paperback)": ("books", [
        "Couldn't put it down. I finished it in two nights.",
        "Rocky is one of my favourite characters in any book, ever.",
        "Funny, clever and surprisingly moving at the end.",
        "The science is explained in a way that never feels like homework.",
    ], [
        "The main character's jokes got old fast.",
        "The middle section drags, with one problem after another.",
        "The paperback binding cracked down the middle on the first read.",
    ], [
        "If you liked The Martian you know exactly what you're getting.",
    ]),
    "Atomic Habits by James Clear (Hardcover)": ("books", [
        "Practical, easy to read, and I've actually stuck with two new habits.",
        "The idea of identity-based habits really clicked for me.",
        "Short chapters make it easy to pick up for ten minutes at a time.",
    ], [
        "Could have been a blog post; it repeats the same point for 300 pages.",
        "Mostly common sense dressed up with anecdotes.",
        "The hardcover arrived with a dented corner.",
    ], [
        "Good summary of ideas you've probably heard elsewhere.",
    ]),
    "The Thursday Murder Club by Richard Osman (Paperback)": ("books", [
        "Cosy, witty and properly funny in places.",
        "I adored Joyce's diary entries.",
        "A lovely, gentle mystery. Perfect holiday reading.",
    ], [
        "Too many characters and point-of-view switches; I kept losing track.",
        "The mystery itself was pretty thin.",
        "The print is tiny in this edition.",
    ], [
        "Book club pick this month, and opinions in the group were split.",
    ]),
    "Coleman Sundome 4-Person Tent": ("outdoor", [
        "Two of us set it up in about ten minutes on the first try.",
        "The colour-coded poles make setup idiot-proof.",
        "Plenty of room for two adults and a dog.",
    ], [
        "The poles are flimsy; one snapped in moderate wind.",
        "Four-person is very optimistic. It fits two adults and gear at most.",
        "The rainfly doesn't reach far enough down and the door seam leaked.",
    ], [
        "It's a solid budget tent for car camping, not for backpacking.",
    ]),
    "Hydro Flask 32 oz Wide Mouth Bottle": ("outdoor", [
        "Ice was still rattling around after a full day in a hot car.",
        "The wide mouth makes it easy to clean and to add ice.",
        "Doesn't sweat at all, so no more rings on my desk.",
    ], [
        "The paint chipped off the bottom within a month.",
        "The lid leaked all over my laptop bag.",
        "Way too pricey for a water bottle, honestly.",
    ], [
        "The 32 oz is heavy when full; the 24 might suit most people better.",
    ]),
    "Black Diamond Spot 400 Headlamp": ("outdoor", [
        "Bright enough for night trail runs.",
        "The red light mode is perfect at camp so you don't blind everyone.",
        "Runs forever on three AAA batteries.",
    ], [
        "The button sequence to change modes is maddening.",
        "The strap lost its stretch after one season.",
        "It switched itself on in my pack and drained the batteries.",
    ], [
        "I'd prefer a rechargeable option, but AAAs are easy to find anywhere.",
    ]),
    "Osprey Daylite Plus 20L Daypack": ("outdoor", [
        "Carries really comfortably, even fully loaded.",
        "Lots of pockets without being fussy.",
        "Fits my 15-inch laptop and a jacket.",
    ], [
        "The back panel doesn't breathe; my shirt was soaked.",
        "The side pockets are too tight for a normal water bottle.",
        "A zip pull came off in the first week.",
    ], [
        "It's a daypack, not a hiking pack, so there's no hip belt to speak of.",
    ]),
    "LEGO Classic Medium Creative Brick Box 10696": ("toys", [
        "My kids have built everything from castles to spaceships with it.",
        "Great mix of colours, and the idea booklet helps get them started.",
        "Classic LEGO quality; it mixes right in with our older sets.",
    ], [
        "Very few wheels and windows, so it's hard to build anything specific.",
        "The box itself is flimsy and split within days.",
        "Expected more bricks for the price.",
    ], [
        "It's a starter set. You'll want more bricks eventually.",
    ]),
    "Melissa & Doug Wooden Building Blocks (100 pcs)": ("toys", [
        "Solid wood, smooth edges and lovely bright colours.",
        "My toddler plays with them every single day.",
        "Comes with a sturdy storage crate, which saves my sanity.",
    ], [
        "Some of the paint flaked off within a week, which worries me with a baby.",
        "The blocks are lighter than I expected and topple easily.",
        "The crate is cardboard and fell apart.",
    ], [
        "Smaller than they look in the photos.",
    ]),
    "Ravensburger 1000-Piece Jigsaw Puzzle – Alpine Lake": ("toys", [
        "Pieces fit snugly and there's no puzzle dust at all.",
        "Beautiful image with enough variation to keep it interesting.",
        "Kept the whole family busy over the holidays.",
    ], [
        "One piece was missing, which ruined it for me.",
        "The sky section is pure torture, way too much of the same blue.",
        "The picture on the box is tiny, so it was hard to follow.",
    ], [
        "Took us about eight hours over a few evenings.",
    ]),
    "Hasbro Connect 4 Classic Grid": ("toys", [
        "Still as fun as I remember from when I was a kid.",
        "Great for teaching younger kids a bit of strategy.",
        "Quick games, so it's perfect for a rainy afternoon.",
    ], [
        "The slider at the bottom jams and the discs go everywhere.",
        "Cheaper plastic than the version I grew up with.",
        "Two red discs were missing.",
    ], [
        "It's Connect 4. You know what it is.",
    ]),
    "CeraVe Moisturizing Cream, 16 oz": ("beauty", [
        "Cleared up my dry patches in about a week.",
        "No fragrance, which is a must for my sensitive skin.",
        "Huge tub that lasts for months.",
    ], [
        "Way too heavy for my face; I broke out.",
        "Leaves a greasy film on my hands.",
        "The tub arrived with the seal broken, so I sent it back.",
    ], [
        "It's thick and takes a minute or two to sink in.",
    ]),
    "The Ordinary Niacinamide 10% + Zinc 1% Serum": ("beauty", [
        "My pores look noticeably smaller after a month.",
        "Cheap, simple, and it actually works.",
        "Helps with my oily T-zone.",
    ], [
        "Pills horribly under my moisturizer.",
        "Made me break out in tiny red bumps.",
        "The dropper is messy and it's easy to use far too much.",
    ], [
        "It's a bit tacky on its own, so I put moisturizer over it.",
    ]),
    "Philips Sonicare 4100 Electric Toothbrush": ("beauty", [
        "My teeth feel dentist-clean every day.",
        "The two-minute timer with the 30-second nudges is really helpful.",
        "Battery lasts about three weeks between charges.",
    ], [
        "Replacement heads are ridiculously expensive.",
        "It's much louder than my old brush.",
        "Stopped holding a charge after ten months.",
    ], [
        "Only one intensity setting, which is fine by me.",
    ]),
    "Levi's 501 Original Fit Jeans": ("clothing", [
        "Fit exactly like my last pair, which is exactly what I wanted.",
        "Sturdy denim that softens up nicely after a few washes.",
        "Classic look that goes with everything.",
    ], [
        "The back pockets are shallower than on my older pairs.",
        "The crotch seam tore after two months.",
        "The colour faded a lot in the first wash.",
    ], [
        "The button fly takes some getting used to.",
    ]),
    "Darn Tough Hiker Micro Crew Socks": ("clothing", [
        "Hiked 80 miles in these without a single blister.",
        "The lifetime warranty is real; they replaced a worn pair with no questions.",
        "Warm but not sweaty.",
    ], [
        "Too thick for my running shoes.",
        "Wore through at the heel far sooner than the reviews suggested.",
        "$25 for one pair of socks is hard to justify.",
    ], [
        "They run a little snug, so size up if you're between sizes.",
    ]),
    "Patagonia Better Sweater Fleece Jacket": ("clothing", [
        "Warm, well made, and smart enough for the office.",
        "I've worn it nearly every day this autumn.",
        "The zip is smooth and feels built to last.",
    ], [
        "Pilled under the arms after a handful of washes.",
        "The sleeves are oddly long.",
        "It's a magnet for dog hair.",
    ], [
        "It fits slim, so I sized up.",
    ]),
    "KONG Classic Dog Toy, Large": ("pets", [
        "Stuffed with peanut butter and frozen, it keeps my lab busy for an hour.",
        "Survives being thrown around the garden every single day.",
        "Bounces unpredictably, which my dog loves.",
    ], [
        "My pit bull chewed through it in two days.",
        "Hard to clean out the inside.",
        "The large is bigger than I expected; get the medium for a mid-sized dog.",
    ], [
        "Pretty boring for the dog unless you fill it with something.",
    ]),
}

CATEGORY: dict[str, dict[str, list[str]]] = {
    "kitchen": {
        "pos": ["Feels solid and well made.", "Easy to clean, which matters more than I thought.",
                "Gets used almost every day in our house.", "Looks nice on the counter, too."],
        "neg": ["Started showing wear much sooner than I'd like.",
                "Cleaning it is more hassle than it should be.",
                "Quality control seems hit and miss, judging by the other reviews and my own experience."],
        "ctx": ["I use it every morning before work.", "We cook for a family of five most nights.",
                "Bought it to replace one that finally gave up after years.",
                "My partner is the real cook in the house, so this is partly their review."],
    },
    "electronics": {
        "pos": ["Setup took less than five minutes.", "Build quality feels premium.",
                "Sturdy enough to survive being tossed in a bag.", "A firmware update fixed the one small issue I had."],
        "neg": ["The connection drops more than it should.", "The software feels like an afterthought.",
                "Started having issues right after the return window closed, of course."],
        "ctx": ["I mostly use it on my commute.", "I work from home, so it gets used eight hours a day.",
                "Bought it for a long-haul trip.", "Replacing an older model I'd had for years."],
    },
    "books": {
        "pos": ["One of those books I'll be pressing on friends.", "Well written and well paced.",
                "I've already ordered the author's other books."],
        "neg": ["I gave up about two-thirds of the way through.", "The ending felt rushed.",
                "Not sure what all the hype is about."],
        "ctx": ["Read it over a long weekend.",
                "Listened to the audiobook first and then bought the paper copy.",
                "Got this for book club.", "Bought it as a gift and then read it before wrapping it, oops."],
    },
    "outdoor": {
        "pos": ["Held up well in wind and rain.", "Light enough that I don't notice it on long days.",
                "Feels like it will survive years of abuse."],
        "neg": ["Not as durable as I'd hoped for outdoor gear.",
                "Fine for a sunny afternoon, useless in real weather.",
                "The materials feel cheaper than the photos suggest."],
        "ctx": ["Took it on a week-long trip to the Lake District.", "Used it on three camping weekends so far.",
                "I hike most weekends in all weather.", "Bought it for a trip to Yosemite."],
    },
    "toys": {
        "pos": ["Keeps the kids off screens for hours.", "Sturdy enough to survive my very rough four-year-old.",
                "Good for both younger and older kids."],
        "neg": ["The kids lost interest after a day or two.", "Not as sturdy as I'd expect from this brand.",
                "Small parts everywhere, so not great with a toddler in the house."],
        "ctx": ["Bought it for my 6-year-old's birthday.", "Christmas present for my nephew.",
                "We have three kids under eight, so this gets a proper stress test.", "Grandma approved, too."],
    },
    "beauty": {
        "pos": ["A little goes a long way.", "Saw results within a couple of weeks.", "Gentle enough for daily use."],
        "neg": ["Irritated my skin within a few days.", "Didn't notice any difference at all.",
                "The packaging makes it hard to get the last bit out."],
        "ctx": ["I have dry, sensitive skin for reference.", "Using it morning and night for about six weeks now.",
                "My dermatologist recommended it.", "I'm in my 40s with combination skin."],
    },
    "clothing": {
        "pos": ["True to size.", "Washes well and hasn't shrunk.", "Comfortable from the first wear."],
        "neg": ["Runs small; I had to exchange for the next size up.",
                "The stitching came loose after a few washes.",
                "The colour in person is nothing like the photos."],
        "ctx": ['For reference I\'m 5\'10" and about 170 lbs.', "Bought two so I could rotate them.",
                "Wore them on a two-week trip.", "I'm usually between sizes, which makes online shopping fun."],
    },
    "pets": {
        "pos": ["Our dog goes crazy for it.", "Holds up to serious chewing.",
                "Worth it for the peace and quiet alone."],
        "neg": ["Didn't last a week with our dog.", "Our dog completely ignores it.",
                "Smelled strongly of rubber when it arrived."],
        "ctx": ["We have a 3-year-old lab mix who destroys everything.", "Bought it for our new rescue pup.",
                "Our vet suggested it for separation anxiety."],
    },
}

OPEN = {
    "pos": ["Absolutely love this.", "Five stars, no hesitation.", "Bought this on a whim and I'm really glad I did.",
            "This is my second one; the first went to my sister.", "Exceeded my expectations.",
            "Really happy with this purchase!", "Does exactly what it says on the tin.",
            "I was skeptical after reading some of the negative reviews, but mine has been great.",
            "Honestly one of the better things I've bought this year.", "Wow.", "So far, so good.",
            "Can't fault it."],
    "neg": ["Really disappointed.", "I wanted to love this, but no.", "Save your money.",
            "Honestly, just disappointing.", "Not what I expected at all.",
            "I rarely write reviews, but this one needs a warning.", "Ugh.",
            "Such a letdown after all the hype.", "Do not buy.",
            "I don't know how this has so many good reviews."],
    "neu": ["It's okay.", "Mixed feelings about this one.", "Fine for the price.",
            "Does the job, nothing special.", "Not bad, not great.", "Hard to rate this one.",
            "Pretty average, to be honest."],
}
SHIPPING = {
    "pos": ["Arrived a day early and well packed.",
            "Delivery was quick, and the packaging was minimal, which I appreciate.",
            "Came in the original box, no damage."],
    "neg": ["The box was crushed when it arrived.",
            "Took almost three weeks to arrive even though it said 2-day shipping.",
            "It was clearly a returned item: opened packaging and fingerprints everywhere.",
            "The courier left it out in the rain."],
}
VALUE = {
    "pos": ["Worth every penny.", "Great value compared with the big-name alternatives.",
            "Got it on sale, which made it an even better deal.", "Not cheap, but you get what you pay for."],
    "neg": ["For what it costs, I expected a lot better.", "Overpriced for what it is.",
            "You can get the same thing for half the price elsewhere."],
}
CLOSE = {
    "pos": ["Would recommend.", "Will buy again.", "Highly recommend!", "10/10.",
            "Already ordered another as a gift.", "No regrets.", "Happy customer here.",
            "Recommended it to all my friends."],
    "neg": ["Would not buy again.", "Avoid.", "Customer service was no help either.",
            "One star because zero isn't an option.", "Back it goes.", "Very frustrating.", "Look elsewhere."],
    "neu": ["Might keep it, might not.", "Three stars feels about right.", "It'll do for now.",
            "Would maybe buy again if it was on sale.", "Your mileage may vary."],
}
UPDATE = {
    "pos": "Update after a month: still going strong.",
    "neg": "Update: the replacement has exactly the same problem.",
    "neu": "Update: still undecided after a month of use.",
}
SHORT = {
    "pos": ["Great.", "Love it!", "Perfect gift.", "Exactly as described.", "👍", "Very good quality",
            "Kids love it", "Excellent product, fast delivery.", "Works great.", "Super happy with it :)",
            "A+++", "Best purchase of the year."],
    "neg": ["Broke within a week.", "Junk.", "Doesn't work.", "Returned.", "Cheaply made.",
            "Waste of money", "Arrived damaged.", "Nope."],
    "neu": ["OK.", "It's fine.", "As expected.", "Meh.", "Does what it should.", "Average.", "Fine, I guess."],
    "mixed": ["Good, but overpriced.", "Nice idea, poor execution.", "Decent, but I expected more.",
              "Love the design, hate the quality."],
}
CONNECT = {  # connective -> lower-case the following sentence?
    "neg": [("That said, ", True), ("My only complaint: ", True), ("One gripe: ", True), ("But ", True),
            ("However, ", True), ("The downside? ", False)],
    "pos": [("On the plus side, ", True), ("To be fair, ", True), ("In fairness, ", True), ("Still, ", True),
            ("On the other hand, ", True)],
}
KEEP_CAPS = {"I", "I've", "I'd", "I'm", "I'll", "Rocky", "Bluetooth", "Joyce", "LEGO", "KONG", "Logi"}
TYPOS = [("definitely", "definately"), ("really", "realy"), ("because", "becuase"),
         ("received", "recieved"), ("it's", "its"), ("than", "then")]

COUNTRIES = ["US"] * 40 + ["GB"] * 16 + ["CA"] * 10 + ["AU"] * 8 + ["IN"] * 5 + ["IE"] * 3 + \
            ["NZ"] * 2 + ["DE"] * 3 + ["NL"] * 2 + ["SE"] * 2 + ["SG"] * 2 + ["ZA"] * 2 + \
            ["PH"] * 2 + ["FR"] + ["ES"] + ["MX"]

# --------------------------------------------------------------------------
# Hand-written awkward rows at fixed ids: id -> (product, rating, country, review, tags)
# --------------------------------------------------------------------------
LONG_INSTANT_POT = (
    "I held off buying one of these for years because it felt like a fad, but after my old slow cooker "
    "died I finally caved. I've now had it for about eight months, so here's a proper review for anyone "
    "on the fence.\n\n"
    "The good: it genuinely saves time on weeknights. Dried chickpeas go from bag to hummus in about 50 "
    "minutes with no soaking, which is the single biggest change in how we cook. Rice is perfect every "
    "time (1:1 water for white rice, 12 minutes, natural release for 10; don't trust the \"Rice\" "
    "button). Bone broth is ridiculous: two hours instead of all day, and it gels properly. The "
    "stainless pot goes in the dishwasher, and the sauté function means chilli and stews are genuinely "
    "one-pot meals.\n\n"
    "The not-so-good: the sealing ring absorbs smells. We now have two rings, one for savoury food and "
    "one for sweet things like cheesecake and yogurt, and I'd recommend buying a spare straight away. "
    "The \"burn\" warning is over-sensitive with anything thick or tomato-based; the trick is to layer "
    "the sauce on top and not stir until after cooking. Also, the times quoted in recipes are "
    "misleading, because it takes 10-15 minutes to come up to pressure and another 10-20 to release, "
    "so a \"5 minute\" recipe is really 30+.\n\n"
    "The manual is poorly written and the button layout is cluttered: I use maybe four of the fourteen "
    "presets. The lid has nowhere sensible to rest while you're stirring, although the little slot in "
    "the handle helps once you discover it (it took me three months).\n\n"
    "A few tips if you do buy one: do the water test first so you know what a normal pressure cycle "
    "sounds and looks like, keep the float valve clean, and never fill it past the max line with beans "
    "or grains, because the foam can clog the vent. It's safe, but it's loud and dramatic when the steam "
    "comes out.\n\n"
    "Overall, would I buy it again? Yes. It's not magic, and it won't replace my oven or my hob, but "
    "it's earned its counter space, which is more than I can say for the bread maker. Four stars rather "
    "than five because of the ring smell and the fussy burn sensor."
)
LONG_SONY = (
    "I've owned the XM3 and the XM4, so I was excited to upgrade. I'll try to give a balanced view after "
    "two months of daily use on the train and in the office.\n\n"
    "Sound: very good, slightly warmer than the XM4 out of the box. With a small tweak to the EQ (I "
    "dropped the bass a notch and turned \"Clear Bass\" off entirely) they sound detailed and natural.\n\n"
    "Noise cancelling: the best I've heard, by a margin. The low rumble of the train vanishes and even "
    "open-plan office chatter is reduced to a murmur. On a flight to Lisbon I forgot I was on a plane.\n\n"
    "Comfort: lighter than the XM4 and the pads are softer. I can wear them for three or four hours "
    "before needing a break, although my ears get warm in summer.\n\n"
    "Calls: much improved. People on the other end say my voice is clear even on a windy platform, "
    "which was never true of the XM4.\n\n"
    "Now the problems. First, they no longer fold, so the case is almost twice the size of the old one "
    "and doesn't fit in my work bag with my laptop; that sounds trivial until you carry them every day. "
    "Second, the touch panel is far too sensitive: adjusting them, pulling up my hood, or even a scarf "
    "brushing the cup will pause the music or skip a track. You can turn it off, but then you lose the "
    "controls entirely. Third, the headband creaks when I move my jaw, which Sony support told me was "
    "\"within specification\". Fourth, multipoint works, but switching between laptop and phone takes "
    "several seconds and sometimes fails, which means a trip into the Bluetooth settings.\n\n"
    "Battery life is excellent, around 30 hours, and the quick charge is handy. The app works fine once "
    "it's set up, though it asks for far too many permissions, and \"Adaptive Sound Control\" kept "
    "switching modes at random until I turned it off.\n\n"
    "So, three stars: outstanding noise cancelling and sound, let down by design choices that make "
    "day-to-day use more annoying than the model they replaced. If you have XM4s, keep them. If you're "
    "coming from something cheaper, you'll probably be delighted."
)
LONG_TENT = (
    "We bought this tent for a family trip to Algonquin (two adults, two kids aged 5 and 8) and I want "
    "to share our experience, because the reviews I read beforehand didn't prepare us.\n\n"
    "Setup is genuinely easy. The colour-coded poles make sense, and my son and I had it standing in "
    "under fifteen minutes on the first attempt without reading the instructions. The zips are smooth, "
    "there's a lantern hook in the roof, and the little electrical access port is a nice touch. Takedown "
    "is slower, mainly because getting it back into the bag is its own puzzle.\n\n"
    "Size is the first problem. \"4-person\" means four people lying shoulder to shoulder with no gear "
    "at all. With two adult sleeping pads and two kids' pads there was no room for bags, so everything "
    "went in the car. If you need it for four, buy the six.\n\n"
    "The real problem was rain. On the second night we got a thunderstorm (nothing extreme, maybe 20 mm "
    "overnight) and water came in along the floor seam by the door and through the bottom of the "
    "window. The rainfly simply doesn't come down far enough on the door side; the rain hits the tent "
    "body and runs straight in. By 3 a.m. the kids' sleeping bags were wet at the feet and we ended up "
    "sleeping in the car. I've since read that you should seam-seal it before use. That may be true, "
    "but it should be printed on the box, not discovered at 3 a.m. in a storm.\n\n"
    "In wind, the fibreglass poles bend alarmingly; one cracked on the third day, and the included "
    "stakes are thin, bendy bits of steel that are useless in anything but soft ground. Buy proper "
    "stakes. Ventilation is decent with both windows open, although condensation built up on the "
    "inside of the fly on cool nights, and the mesh pockets are too small for anything bigger than a "
    "phone.\n\n"
    "To be fair, for a cheap tent used on dry summer weekends it's fine, and the price is low. But for a "
    "real camping trip in variable weather, I'd spend more. Two stars: easy setup and low price, but it "
    "failed at the one job a tent has, keeping you dry."
)

SPECIAL: dict[int, tuple[str, int | None, str, str | None, tuple[str, ...]]] = {
    4: ("Hydro Flask 32 oz Wide Mouth Bottle", 2, "US",
        'The "leak-proof" lid leaked the very first day. I tightened it, loosened it, tried a new gasket, '
        'and it still drips. "Lifetime warranty" my foot.', ("quotes",)),
    6: ("OXO Good Grips 3-Piece Mixing Bowl Set", 4, "US", "  Great value for the money.  ", ("padded",)),
    8: ("Darn Tough Hiker Micro Crew Socks", 5, "DE",
        "Die besten Wandersocken, die ich je hatte. Nach 300 km auf dem Jakobsweg keine einzige Blase – "
        "und sie riechen erstaunlich wenig. Größe fällt etwas klein aus.", ("non_ascii", "de")),
    11: ("Sony WH-1000XM5 Wireless Headphones", 4, "US",
         "Pros:\n- Noise cancelling is excellent\n- Comfortable for hours\n- Great EQ in the app\n\n"
         "Cons:\n- Don't fold flat\n- Touch controls are fiddly\n- Pricey", ("newlines",)),
    13: ("Kindle Paperwhite (16 GB)", 5, "US", None, ("null",)),
    15: ("AeroPress Go Travel Coffee Maker", 5, "FR",
         "Excellent café, même en camping ! Je l'emporte partout et le nettoyage est ultra rapide. "
         "Seul bémol : le mug en plastique n'est pas très élégant.", ("non_ascii", "fr")),
    19: ("Kindle Paperwhite (16 GB)", 5, "GB",
         'My husband calls it my "other half". Fair enough, I\'ve read 30 books on it this year.', ("quotes",)),
    23: ("JBL Flip 6 Bluetooth Speaker", 5, "ES",
         "¡Suena increíble para su tamaño! Se me cayó a la piscina dos veces y sigue funcionando "
         "perfectamente. Muy recomendable.", ("non_ascii", "es")),
    27: ("Black Diamond Spot 400 Headlamp", 5, "US",
         "Bought it for camping, hiking, and, honestly, just sitting in the garden after dark. "
         "Light, bright, cheap, done.", ("commas",)),
    31: ("Kindle Paperwhite (16 GB)", 5, "JP",
         "とても読みやすいです。目が疲れにくく、寝る前の読書が楽しみになりました。バッテリーも長持ちします。",
         ("non_ascii", "ja")),
    36: ("Melissa & Doug Wooden Building Blocks (100 pcs)", 5, "US",
         "My 2yo is obsessed 😍😍 Builds towers and knocks them down all day long 🧱💥", ("non_ascii", "emoji")),
    39: ("Hasbro Connect 4 Classic Grid", 3, "CA", "   ", ("whitespace",)),
    42: ("Patagonia Better Sweater Fleece Jacket", 4, "US",
         'I typed {"size": "M", "color": "Navy"} into the gift message box by mistake and that\'s literally '
         "what got printed on the card. The jacket itself is lovely though.", ("braces", "quotes")),
    46: ("LEGO Classic Medium Creative Brick Box 10696", 5, "GB",
         "Bought for my daughter's 7th birthday.\nShe built a rocket, a house and a very strange horse on "
         "day one.\n\nWould buy again.", ("newlines",)),
    50: ("Anker PowerCore 10000 Portable Charger", 1, "US", None, ("null",)),
    54: ("AeroPress Go Travel Coffee Maker", 4, "GB",
         "Not quite café-quality espresso (it isn't an espresso machine, whatever the box implies), but a "
         "great Americano. Déjà vu every morning, in a good way.", ("non_ascii", "accents")),
    55: ("Instant Pot Duo 7-in-1 Electric Pressure Cooker, 6 Qt", 4, "US", LONG_INSTANT_POT,
         ("long", "newlines", "quotes", "commas")),
    58: ("Levi's 501 Original Fit Jeans", 3, "US",
         'Listed as "Dark Stonewash" but what I got is closer to light blue. Fit is fine and the length '
         'is right (32"), but the colour is not what I paid for.', ("quotes",)),
    63: ('Lodge 10.25" Cast Iron Skillet', 4, "AT",
         "Sehr schwere, aber hervorragende Pfanne. Das Einbrennen vor dem ersten Gebrauch ist Pflicht. "
         "Für Steaks unschlagbar, für Spiegeleier brauche ich noch Übung.", ("non_ascii", "de")),
    69: ("JBL Flip 6 Bluetooth Speaker", 5, "AU",
         "Beach, pool, shower… this thing goes everywhere with me 🔥🔊 10/10", ("non_ascii", "emoji")),
    73: ("Logitech MX Master 3S Mouse", 3, "US",
         "The Options+ app shows one of the buttons labelled {curly} instead of its real name, lol. "
         "Looks like a template bug. The mouse itself is fine.", ("braces",)),
    77: ("Sony WH-1000XM5 Wireless Headphones", 4, "JP",
         "ノイズキャンセリングは最高です。ただ、折りたためないのでケースが大きく、持ち運びが少し不便です。",
         ("non_ascii", "ja")),
    81: ("Darn Tough Hiker Micro Crew Socks", 5, "US", "Fits perfectly. ", ("padded",)),
    87: ("CeraVe Moisturizing Cream, 16 oz", 5, "US",
         "Update after 3 months:\r\nStill using it daily.\r\nThe eczema patches on my hands are gone."
         "\r\n\r\nOriginal review: good stuff.", ("newlines", "crlf")),
    92: ("The Thursday Murder Club by Richard Osman (Paperback)", 3, "BE",
         "Roman sympathique mais un peu long. J'ai adoré les personnages, moins l'intrigue. "
         "« Cosy crime » à l'anglaise, c'est tout à fait le genre.", ("non_ascii", "fr")),
    96: ("Project Hail Mary by Andy Weir (Paperback)", 1, "US",
         "Loved it!!! Best book I've read in years. (Sorry, tapped the wrong star and can't change it.)",
         ("mismatch",)),
    99: ("Coleman Sundome 4-Person Tent", 4, "CA", None, ("null",)),
    101: ("Hasbro Connect 4 Classic Grid", 4, "MX",
          "Muy divertido para jugar en familia. Mis hijos (6 y 9 años) lo adoran. Le quito una estrella "
          "porque la pieza de abajo se traba a veces.", ("non_ascii", "es")),
    109: ("Ravensburger 1000-Piece Jigsaw Puzzle – Alpine Lake", 5, "IT",
          "Puzzle bellissimo, i pezzi si incastrano perfettamente. Ci abbiamo messo una settimana ma ne è "
          "valsa la pena!", ("non_ascii", "it")),
    111: ("Sony WH-1000XM5 Wireless Headphones", 3, "GB", LONG_SONY, ("long", "newlines", "quotes", "commas")),
    117: ("Osprey Daylite Plus 20L Daypack", 4, "US", "\n", ("whitespace",)),
    120: ("Anker PowerCore 10000 Portable Charger", 1, "DE",
          "Nach drei Wochen lädt die Powerbank nicht mehr. Rücksendung läuft. Schade, früher waren "
          "Anker-Produkte zuverlässig.", ("non_ascii", "de")),
    125: ("Atomic Habits by James Clear (Hardcover)", 2, "GB",
          "Meh 🤷‍♀️ Same advice as every other self-help book. Two stars for the nice cover.",
          ("non_ascii", "emoji")),
    128: ("Ravensburger 1000-Piece Jigsaw Puzzle – Alpine Lake", 1, "US",
          "   the puzzle was missing 3 pieces", ("padded",)),
    133: ("Instant Pot Duo 7-in-1 Electric Pressure Cooker, 6 Qt", 4, "US",
          'The "Keep Warm" setting is a lifesaver. The "Burn" message is not: if you cook anything with '
          "tomato, put it on top and DON'T stir.", ("quotes",)),
    139: ("Kindle Paperwhite (16 GB)", 4, "CA",
          "Send-to-Kindle documents sometimes arrive titled {title}, no idea why. Otherwise flawless.",
          ("braces",)),
    144: ("The Ordinary Niacinamide 10% + Zinc 1% Serum", 1, "AR",
          "No me funcionó para nada. Me salieron granitos después de una semana y tuve que dejar de usarlo. "
          "¿Alguien más tuvo el mismo problema?", ("non_ascii", "es")),
    148: ("Hydro Flask 32 oz Wide Mouth Bottle", 5, "US",
          'Took 4 weeks to arrive and the lid was missing. The seller sent a "replacement" lid in a '
          "different colour eventually.", ("mismatch", "quotes")),
    151: ("Coleman Sundome 4-Person Tent", 1, "GB",
          "Day 1: set up fine.\nDay 2: rain. Lots of rain.\nDay 3: packed up a soaking wet tent and drove "
          "home early.\n\nThe seams need sealing straight out of the box, and nobody tells you that.",
          ("newlines",)),
    160: ("KONG Classic Dog Toy, Large", 3, "JP",
          "うちの犬はすぐに飽きてしまいました。おやつを詰めると少し遊びます。耐久性は問題なし。",
          ("non_ascii", "ja")),
    166: ("Levi's 501 Original Fit Jeans", None, "US", None, ("null", "no_rating")),
    171: ("Patagonia Better Sweater Fleece Jacket", 2, "CA",
          "Très déçue. La polaire a bouloché après deux lavages à froid. Pour ce prix-là, je m'attendais à "
          "beaucoup mieux.", ("non_ascii", "fr")),
    176: ("Coleman Sundome 4-Person Tent", 2, "CA", LONG_TENT, ("long", "newlines", "quotes", "commas")),
    182: ("Levi's 501 Original Fit Jeans", 5, "US", "Perfect fit 👖👌🏽", ("non_ascii", "emoji")),
    188: ("CeraVe Moisturizing Cream, 16 oz", 5, "US", " \t ", ("whitespace",)),
    190: ("Project Hail Mary by Andy Weir (Paperback)", 3, "US",
          " Decent book, slow middle section. \n", ("padded", "newlines")),
    195: ("Anker PowerCore 10000 Portable Charger", 5, "US",
          "Works great. {{ Seller: please stop emailing me asking for 5 stars }}", ("braces",)),
}
NO_RATING = (29, 84, 157, 199)  # generated rows whose rating is left empty (166 is special)


# --------------------------------------------------------------------------
def _lower_first(s: str) -> str:
    word = s.split(" ", 1)[0].rstrip(",.;:")
    if word in KEEP_CAPS or not word[:1].isupper() or not word[1:].islower():
        return s
    return s[0].lower() + s[1:]


def _pick(rng: random.Random, pool: list[str], used: set[str]) -> str:
    options = [s for s in pool if s not in used] or pool
    s = rng.choice(options)
    used.add(s)
    return s


def _sentiment(rng: random.Random, rating: int | None) -> str:
    if rating is None:
        return rng.choice(["pos", "pos", "neg", "neu", "mixed"])
    weights = {5: (93, 0, 2, 5), 4: (62, 0, 6, 32), 3: (8, 12, 40, 40),
               2: (0, 68, 7, 25), 1: (0, 94, 2, 4)}[rating]
    return rng.choices(["pos", "neg", "neu", "mixed"], weights)[0]


def compose(rng: random.Random, product: str, rating: int | None) -> str:
    cat, p_pos, p_neg, p_neu = PRODUCTS[product]
    c = CATEGORY[cat]
    used: set[str] = set()
    senti = _sentiment(rng, rating)
    # tone of openers/closers follows the star rating (people hedge, but rarely contradict their stars)
    if rating is None:
        tone = senti if senti != "mixed" else "neu"
    else:
        tone = "pos" if rating >= 4 else "neg" if rating <= 2 else "neu"
    closers = [x for x in CLOSE[tone] if rating == 3 or not x.startswith("Three stars")]
    length = rng.choices(["short", "medium", "long"], [22, 58, 20])[0]

    if length == "short":
        if rng.random() < 0.6:
            text = rng.choice(SHORT[senti if senti != "mixed" or tone == "neu" else tone])
        else:
            text = _pick(rng, {"pos": p_pos, "neg": p_neg}.get(senti, p_neu), used)
        return _noise(rng, text)

    if senti == "mixed" and rng.random() < 0.25:  # Pros/Cons list
        pros = [_pick(rng, p_pos, used).rstrip(".!") for _ in range(rng.randint(1, 3))]
        cons = [_pick(rng, p_neg, used).rstrip(".!") for _ in range(rng.randint(1, 2))]
        text = "Pros:\n" + "\n".join("- " + x for x in pros) + "\n\nCons:\n" + "\n".join("- " + x for x in cons)
        if rng.random() < 0.5:
            text += "\n\n" + rng.choice(closers)
        return text

    def body(n: int) -> list[str]:
        if senti == "pos":
            return [_pick(rng, p_pos + c["pos"], used) for _ in range(n)]
        if senti == "neg":
            return [_pick(rng, p_neg + c["neg"], used) for _ in range(n)]
        if senti == "neu":
            out = [_pick(rng, p_neu, used)]
            if n > 1:
                side = tone if tone != "neu" else rng.choice(["pos", "neg"])
                out.append(_pick(rng, p_pos if side == "pos" else p_neg, used))
            return out
        # mixed: the majority side follows the rating; both sides from the product's own pools
        major = tone if tone != "neu" else rng.choice(["pos", "neg"])
        minor = "neg" if major == "pos" else "pos"
        pools = {"pos": p_pos, "neg": p_neg}
        out = [_pick(rng, pools[major], used) for _ in range(max(1, n - 1))]
        conn, lower = rng.choice(CONNECT[minor])
        nxt = _pick(rng, pools[minor], used)
        out.append(conn + (_lower_first(nxt) if lower else nxt))
        return out

    sents: list[str] = []
    if rng.random() < 0.5:
        sents.append(rng.choice(OPEN[tone]))
    if length == "long" or rng.random() < 0.2:
        sents.append(rng.choice(c["ctx"]))
    sents += body(rng.randint(1, 2) if length == "medium" else rng.randint(2, 3))

    side = tone if tone != "neu" else rng.choice(["pos", "neg"])
    extra: list[str] = []
    if rng.random() < 0.3:
        extra.append(rng.choice(SHIPPING["neg" if tone == "neg" else "pos"]))
    if rng.random() < 0.35:
        extra.append(rng.choice(VALUE[side]))
    if rng.random() < 0.5 or length == "long":
        extra.append(rng.choice(closers))

    if length == "long":
        paras = [" ".join(sents), " ".join(extra)]
        if rng.random() < 0.3:
            paras.append(UPDATE[tone])
        text = "\n\n".join(p for p in paras if p)
    else:
        text = " ".join(sents + extra)
    return _noise(rng, text)


def _noise(rng: random.Random, text: str) -> str:
    r = rng.random()
    if r < 0.05:
        text = text.lower()
    elif r < 0.12 and text.endswith("."):
        text = text[:-1]
    elif r < 0.16:
        text = text.replace("!", "!!")
    if rng.random() < 0.06:
        for good, bad in TYPOS:
            if good in text:
                text = text.replace(good, bad, 1)
                break
    if rng.random() < 0.04:
        text = text.replace(". ", ".  ", 1)
    return text


def build_reviews(rng: random.Random) -> pd.DataFrame:
    names = list(PRODUCTS)
    popularity = [rng.uniform(0.5, 3.0) for _ in names]
    free_ids = [i for i in range(1, N_REVIEWS + 1) if i not in SPECIAL]
    products = names * 2
    products += rng.choices(names, popularity, k=len(free_ids) - len(products))
    rng.shuffle(products)

    start, span = date(2023, 1, 1), (date(2025, 12, 31) - date(2023, 1, 1)).days
    rows = []
    gen = iter(products)
    for rid in range(1, N_REVIEWS + 1):
        if rid in SPECIAL:
            product, rating, country, review, _tags = SPECIAL[rid]
        else:
            product = next(gen)
            rating = rng.choices([5, 4, 3, 2, 1], [41, 22, 11, 9, 17])[0]
            if rid in NO_RATING:
                rating = None
            review = compose(rng, product, rating)
            country = rng.choice(COUNTRIES)
        day = start + timedelta(days=rng.randrange(span + 1))
        rows.append({"review_id": rid, "product": product, "rating": rating, "review": review,
                     "country": country, "date": day.isoformat()})
    df = pd.DataFrame(rows)
    return df.astype({"review_id": "int64", "product": "str", "rating": "Int64", "review": "str",
                      "country": "str", "date": "str"})


# --------------------------------------------------------------------------
# Tickets
# --------------------------------------------------------------------------
TEAMS = ["billing", "shipping", "returns", "technical", "account", "other"]
ROUTER_PROMPT = (
    "You route customer-support tickets for an online store to the right team. "
    "Teams: " + ", ".join(TEAMS) + ". "
    'Reply with a JSON object like {"team": "shipping"} and nothing else.'
)

TICKETS: list[tuple[str, str | None]] = [
    ("Where is my order #48213?",
     "Hi,\n\nI ordered a Kindle Paperwhite on March 3rd and the tracking page still says \"Label created\". "
     "It's been nine days. Can you check what's going on?\n\nThanks,\nDana"),
    ("Charged twice",
     "I was charged twice for the same order (#50117): two identical charges of $89.99 on my Visa. "
     "Please refund one of them."),
    ("Can't log in", "Password reset email never arrives. I've checked spam, promotions, everything."),
    ("Return label request",
     "The jeans I ordered are too small. How do I get a return label? The order number is 51022."),
    ("App crashes when I open my orders",
     "Every time I tap \"My orders\" in the iOS app it crashes.\n\niPhone 13, iOS 17.4, app version 6.2.1"),
    ("Wrong item received",
     "I ordered the 1000-piece Alpine Lake puzzle and received a 500-piece kids' puzzle of farm animals instead."),
    ("Update billing address",
     "I moved last month. How do I change the billing address on my saved card? The form won't accept my "
     "new postcode (SW1A 1AA)."),
    ("Discount code not working",
     "Code SPRING20 says \"invalid\" at checkout, but your email says it's valid until the 30th."),
    ("Please delete my account",
     "Under GDPR I'd like my account and all associated data deleted. Please confirm when done."),
    ("Package marked delivered but not here",
     "Tracking says delivered at 2:14 pm yesterday, left at front door. It's not there and my neighbours "
     "haven't seen it."),
    ("Refund still not received",
     "I returned the tent on the 2nd (tracking shows you received it on the 6th). Still no refund after "
     "two weeks."),
    ("Question about warranty",
     "Does the Sonicare come with a manufacturer's warranty if bought through you, or do I need to contact "
     "Philips directly?"),
    ("Invoice for my company",
     "Can I get a VAT invoice with our company name and VAT number (GB123456789) for order 49920?"),
    ("Damaged in transit",
     "The Instant Pot arrived with a big dent in the side and the lid doesn't close properly. Photos attached."),
    ("Two-factor codes not arriving",
     "I switched phone numbers and now can't get 2FA codes. How do I update my number if I can't log in?"),
    ("Exchange for a different size",
     "Can I exchange the Patagonia fleece (M) for an L, instead of returning it and re-ordering?"),
    ("Payment page won't load",
     "Checkout hangs at \"Processing…\" forever. Tried Chrome and Firefox, cleared cookies, same thing."),
    ("Thank you!",
     "Just wanted to say thank you to Priya in customer service, who sorted out my order in five minutes. "
     "Great service!"),
    ("Shipping to Canada?", "Do you ship to Canada, and if so, are duties included in the price shown?"),
    ("Subscription cancelled but still charged",
     "I cancelled my Plus membership on 1 May and was charged $12.99 again on 3 May. Please refund."),
    ("Missing piece", "Connect 4 came with only 20 yellow discs instead of 21. Can you send one?"),
    ('Order stuck in "processing"',
     "Order 50977 has said \"processing\" for six days. Has it even been packed?"),
    ("Gift message printed wrong",
     'The gift card printed as {"size": "M", "color": "Navy"} instead of my message. Can you reprint it '
     "and send it separately?\n\nOrder 50881."),
    ('Your emails say "Hi {first_name}"',
     'Every marketing email I get from you starts with "Hi {first_name}," so someone\'s template is '
     "broken. Also, please unsubscribe me."),
    ("Product question", "Is the Hydro Flask lid dishwasher safe?"),
    ("Price match", "I saw the Sony XM5 for $50 less at another retailer. Do you price match?"),
    ("Bestellung nicht angekommen",
     "Hallo,\n\nmeine Bestellung (Nr. 50412) sollte am Montag ankommen, ist aber immer noch nicht da. "
     "Die Sendungsverfolgung zeigt seit fünf Tagen keine Änderung.\n\nMit freundlichen Grüßen\nJürgen Müller"),
    ("Remboursement",
     "Bonjour,\n\nJ'ai renvoyé la veste il y a trois semaines et je n'ai toujours pas été remboursée. "
     "Pouvez-vous vérifier ?\n\nCordialement,\nHélène"),
    ("No puedo acceder a mi cuenta",
     "Hola, olvidé mi contraseña y el enlace para restablecerla no funciona. ¿Me pueden ayudar?"),
    ("注文のキャンセルについて",
     "昨日注文した商品（注文番号 50733）をキャンセルしたいです。まだ発送されていなければお願いします。"),
    ("URGENT!!! 😡😡", "Third time contacting you. My order is LATE and nobody answers. 🤬 Fix it."),
    ("Call me back please", None),
    ("Refund", "   \n  "),
    ("Error at checkout: payment declined", None),  # long body filled in below
    ("  order 49001 missing item  ", "  The box only had the charger, not the cable.  "),
    ("Test ticket - please ignore", "test"),
    ('Item listed as "new" was used',
     'The headphones I received as "new" had someone else\'s hair in the pads and 47 hours of usage in the '
     "app. I want a replacement, not a refund."),
    ("Change delivery address",
     "I made a typo in the street name: it should be 12 Rue de l'Église, not 12 Rue de l'Eglise. Order 51190."),
    ("Bulk order for a school",
     "We'd like 40 Connect 4 sets for a primary school. Is there a bulk discount, and can you invoice the "
     "school district (net 30)?"),
    ("Unrecognised login",
     "I got an email about a login from a city I've never been to. That wasn't me. I've changed my "
     "password; can you check for any other activity?"),
]
EMPTY_MESSAGES_TICKET = "Test ticket - please ignore"


def _long_ticket_body() -> str:
    lines = [
        "Hello,",
        "",
        "I've been trying to pay for my order (cart has the Lodge skillet, two pairs of Darn Tough socks and "
        "the Osprey daypack) since yesterday evening and every attempt fails. My bank says there is no block "
        "on the card and they can't see any declined transactions on their side, so I don't think the problem "
        "is with them. I tried two different cards (Visa and Mastercard), two browsers, and the app. The "
        "app just says \"Something went wrong\". The website shows the error below; I copied it from the "
        "developer console in case it helps your engineers:",
        "",
    ]
    for i in range(6):
        lines.append(
            '{"error": {"code": "card_declined", "decline_code": "generic_decline", '
            f'"request_id": "req_8f3a{i:02d}c1", "attempt": {i + 1}, '
            '"message": "Your card was declined.", "param": null}}'
        )
    lines += [
        "",
        "POST /api/v2/checkout/confirm 402 (Payment Required)",
        "    at submitPayment (checkout.js:1187:23)",
        "    at async HTMLFormElement.<anonymous> (checkout.js:1402:9)",
        "",
        "Each attempt also put a pending authorisation of $143.85 on my card, so I now have four holds on "
        "my account that I'm told will take up to seven days to drop off. That's money I need for rent. "
        "Please can someone (a) tell me why the payment is failing, (b) release the pending holds if you "
        "can, and (c) let me know whether the items in my cart are reserved, because the daypack says only "
        "2 left in stock and I don't want to lose it after all this.",
        "",
        "Thanks in advance,",
        "Sam O'Neill",
    ]
    return "\n".join(lines)


def build_tickets() -> list[dict]:
    out = []
    for n, (subject, body) in enumerate(TICKETS, start=1):
        if subject.startswith("Error at checkout"):
            body = _long_ticket_body()
        user = f"Subject: {subject}" if body is None else f"Subject: {subject}\n\n{body}"
        messages = [] if subject == EMPTY_MESSAGES_TICKET else [
            {"role": "system", "content": ROUTER_PROMPT},
            {"role": "user", "content": user},
        ]
        out.append({"ticket_id": f"TCK-{1000 + n}", "subject": subject, "body": body, "messages": messages})
    return out


def main() -> None:
    rng = random.Random(SEED)
    df = build_reviews(rng)
    df.to_csv(HERE / "reviews.csv", index=False, lineterminator="\n", encoding="utf-8")
    # explicit Arrow schema: plain `string` (not pandas 3's default large_string), rating nullable int64
    table = pa.Table.from_pandas(df, schema=PARQUET_SCHEMA, preserve_index=False)
    pq.write_table(table, HERE / "reviews.parquet")
    tickets = build_tickets()
    with open(HERE / "tickets.jsonl", "w", encoding="utf-8", newline="\n") as fh:
        for t in tickets:
            fh.write(json.dumps(t, ensure_ascii=False) + "\n")
    print(f"wrote {len(df)} reviews and {len(tickets)} tickets to {HERE}")


if __name__ == "__main__":
    main()
