"""The synthetic world's catalogs, as data: categories, merchants, mini programs, apps, page paths, queries.

Every catalog item belongs to one of the twelve `CATEGORIES`. Item texts are identities (a merchant name, a
program name, a page path, a query), so they repeat across users: the whole catalog holds a few thousand
distinct texts however many users are generated.

Each sequence source has one *primary* catalog (`PRIMARY[source]`), whose item gives the event its category,
plus, for `bill` and `miniprogram`, a *secondary* field drawn per category (payment channel, action).
Within a category, items have Zipf-like popularity in a fixed, seed-independent order.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

CATEGORIES: tuple[str, ...] = (
    "food",
    "transport",
    "wealth",
    "insurance",
    "travel",
    "shopping",
    "entertainment",
    "health",
    "education",
    "gaming",
    "home",
    "beauty",
)
CATEGORY_INDEX: dict[str, int] = {c: i for i, c in enumerate(CATEGORIES)}
# Everyone's daily routine: food delivery and transit. They dominate the logs and predict little.
HABITUAL_CATEGORIES: tuple[str, ...] = ("food", "transport")
ZIPF_EXPONENT = 1.0
_ORDER_SEED = 20260630  # fixes the popularity order of items; independent of the generator's seed

# --- bill: merchants (stem × kind per category) and payment channels -------------------------------------
_MERCHANT_PARTS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "food": (
        ("Golden Wok", "Spice Route", "Noodle House", "Green Bowl", "Dumpling King", "Sunrise", "Hotpot Garden"),
        ("Delivery", "Restaurant", "Cafe", "Express"),
    ),
    "transport": (
        ("Metro", "CityBus", "QuickRide", "GreenCab", "FastLane", "Shared Bike"),
        ("Transit", "Taxi", "Ride Hailing", "Parking", "Fuel"),
    ),
    "wealth": (
        ("FundPlus", "Harbor", "Evergreen", "Summit", "Prosper", "Golden Gate"),
        ("Fund Purchase", "Index Fund", "Bond Fund", "Money Market", "Gold Savings"),
    ),
    "insurance": (
        ("SafeHome", "Lifeline", "Shield", "Guardian", "Peace of Mind", "TrueCare"),
        ("Health Insurance", "Life Insurance", "Car Insurance", "Travel Insurance", "Premium"),
    ),
    "travel": (
        ("SkyWings", "Horizon", "BlueJet", "Orient", "Silk Road", "Coastline"),
        ("Airlines", "Hotels", "Travel Agency", "Rail Tickets", "Car Rental"),
    ),
    "shopping": (
        ("MegaMart", "Daily Deals", "Style Street", "Gadget Zone", "Value Shop", "Trend"),
        ("Online", "Store", "Outlet", "Marketplace"),
    ),
    "entertainment": (
        ("StarScreen", "Melody", "Laugh Factory", "Show Time", "Pixel"),
        ("Cinema", "Music", "Concert Tickets", "Streaming", "Theatre"),
    ),
    "health": (
        ("CarePoint", "Wellness", "Vital", "HealthyLife", "MediQuick", "Pure"),
        ("Pharmacy", "Clinic", "Dental", "Checkup", "Fitness"),
    ),
    "education": (
        ("Bright Mind", "Scholar", "EduPath", "Knowledge Tree", "Mentor"),
        ("Academy", "Online Courses", "Language School", "Test Prep", "Bookstore"),
    ),
    "gaming": (
        ("Dragon", "Pixel Quest", "Star Legends", "Arcade", "Battle Arena", "Puzzle"),
        ("Games", "Top-up", "Game Store", "Esports"),
    ),
    "home": (
        ("Cozy Nest", "City Power", "AquaFlow", "Fixit", "Green Garden", "Bright Home"),
        ("Utilities", "Repair", "Furniture", "Cleaning", "Rent"),
    ),
    "beauty": (
        ("Glow", "Silk Touch", "Rose", "Urban Chic", "Pure Skin", "Bella"),
        ("Salon", "Cosmetics", "Spa", "Skincare", "Nail Studio"),
    ),
}
CHANNELS: tuple[str, ...] = ("app pay", "QR code", "card", "bank transfer", "wallet balance", "auto debit")
_CHANNEL_WEIGHTS_DEFAULT = (0.40, 0.30, 0.15, 0.03, 0.10, 0.02)
_CHANNEL_WEIGHTS: dict[str, tuple[float, ...]] = {
    "transport": (0.30, 0.50, 0.10, 0.00, 0.10, 0.00),
    "wealth": (0.35, 0.00, 0.10, 0.40, 0.10, 0.05),
    "insurance": (0.30, 0.00, 0.20, 0.20, 0.05, 0.25),
    "travel": (0.40, 0.05, 0.45, 0.05, 0.05, 0.00),
    "home": (0.25, 0.10, 0.15, 0.10, 0.10, 0.30),
}

# --- miniprogram: names (stem + suffix per category) and actions ---------------------------------------
_MINIPROGRAM_STEMS: dict[str, tuple[str, ...]] = {
    "food": ("Meal", "Snack", "Chef", "Cafe"),
    "transport": ("Ride", "Metro", "Park", "Bike"),
    "wealth": ("Fund", "Stock", "Gold", "Wealth"),
    "insurance": ("Insure", "Policy", "Claim", "Cover"),
    "travel": ("Trip", "Flight", "Hotel", "Visa"),
    "shopping": ("Shop", "Deal", "Coupon", "Mall"),
    "entertainment": ("Movie", "Music", "Show", "Comic"),
    "health": ("Health", "Doctor", "Pill", "Fit"),
    "education": ("Learn", "Quiz", "Book", "Tutor"),
    "gaming": ("Game", "Play", "Quest", "Arcade"),
    "home": ("Home", "Bill", "Fix", "Rent"),
    "beauty": ("Beauty", "Glow", "Style", "Spa"),
}
_MINIPROGRAM_SUFFIXES = ("Plus", "Go", "Hub")
ACTIONS: tuple[str, ...] = ("open", "browse", "search", "buy", "share", "subscribe")
_ACTION_WEIGHTS_DEFAULT = (0.45, 0.25, 0.10, 0.10, 0.05, 0.05)
# Median dwell time (seconds) per action.
DWELL_MEDIAN_S: tuple[float, ...] = (20.0, 60.0, 30.0, 90.0, 15.0, 40.0)

# --- app: names per category --------------------------------------------------------------------------
_APP_STEMS: dict[str, tuple[str, ...]] = {
    "food": ("FoodDash", "Yummy", "EatNow", "HungryGo"),
    "transport": ("RideNow", "MetroMap", "CabGo", "BikeShare"),
    "wealth": ("FundWise", "StockPro", "WealthBox", "CoinSafe"),
    "insurance": ("InsureMe", "PolicyPal", "ClaimFast", "SafeGuard"),
    "travel": ("TripMate", "FlyAway", "HotelHunt", "TravelBug"),
    "shopping": ("ShopMax", "DealHunter", "CartGo", "StyleBox"),
    "entertainment": ("StreamFlix", "TuneIn", "ShortClips", "ComicVerse"),
    "health": ("FitTrack", "DocOnline", "PillBox", "SleepWell"),
    "education": ("StudyBuddy", "LinguaPro", "MathMaster", "ReadMore"),
    "gaming": ("BattleZone", "PuzzleMania", "RaceFever", "CardKings"),
    "home": ("HomeHelper", "PowerBill", "FixItNow", "RentEasy"),
    "beauty": ("GlowUp", "MakeupStudio", "SkinDiary", "HairStyle"),
}
_APP_SUFFIXES = ("", " Lite")

# --- page_path: home.<section>.<page>.<action> ---------------------------------------------------------
_PAGE_SECTIONS: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {
    "food": ("food", ("takeout", "restaurant_list", "coupon", "order"), ("view", "pay", "share")),
    "transport": ("mobility", ("ride", "metro_card", "parking", "bike"), ("view", "pay", "topup")),
    "wealth": ("wealth", ("fund_list", "fund_detail", "gold", "portfolio"), ("view", "buy", "compare")),
    "insurance": ("insurance", ("health_plan", "life_plan", "car_plan", "claim"), ("view", "quote", "buy")),
    "travel": ("travel", ("flights", "hotels", "trains", "visa"), ("search", "view", "book")),
    "shopping": ("mall", ("deals", "product_detail", "cart", "flash_sale"), ("view", "add", "pay")),
    "entertainment": ("fun", ("movies", "music", "shows", "comics"), ("view", "play", "book")),
    "health": ("health", ("pharmacy", "doctor", "checkup", "fitness"), ("view", "book", "pay")),
    "education": ("learn", ("courses", "languages", "exams", "books"), ("view", "enroll", "pay")),
    "gaming": ("games", ("topup", "store", "events", "leaderboard"), ("view", "pay", "join")),
    "home": ("life", ("utilities", "repair", "rent", "furniture"), ("view", "pay", "book")),
    "beauty": ("beauty", ("salon", "cosmetics", "spa", "skincare"), ("view", "book", "buy")),
}

# --- search: query templates with {product} and {city} slots --------------------------------------------
CITIES: tuple[str, ...] = (
    "Beijing", "Shanghai", "Guangzhou", "Shenzhen", "Chengdu", "Hangzhou", "Wuhan", "Xi'an",
    "Nanjing", "Chongqing", "Tianjin", "Suzhou", "Changsha", "Qingdao", "Xiamen", "Kunming",
    "Dalian", "Harbin", "Sanya", "Guilin", "Lijiang", "Zhengzhou", "Hefei", "Fuzhou",
)  # fmt: skip
PRODUCTS: dict[str, tuple[str, ...]] = {
    "food": ("hotpot", "dumplings", "noodles", "milk tea", "pizza", "sushi", "barbecue", "salad"),
    "transport": ("taxi", "metro card", "bus pass", "parking", "bike rental", "fuel", "train pass", "shuttle"),
    "wealth": ("index fund", "bond fund", "money market fund", "gold", "stock fund", "pension fund", "ETF",
               "fixed deposit"),
    "insurance": ("health insurance", "life insurance", "car insurance", "travel insurance",
                  "accident insurance", "critical illness cover", "pet insurance", "home insurance"),
    "travel": ("flights", "hotels", "train tickets", "tour packages", "car rental", "cruise", "visa", "resort"),
    "shopping": ("phone", "sneakers", "laptop", "dress", "headphones", "backpack", "watch", "tv"),
    "entertainment": ("movie tickets", "concert tickets", "music membership", "video membership", "comics",
                      "theatre tickets", "karaoke", "escape room"),
    "health": ("vitamins", "dentist", "eye exam", "gym membership", "cold medicine", "health checkup",
               "yoga class", "physiotherapy"),
    "education": ("english course", "ielts prep", "coding bootcamp", "piano lessons", "math tutor",
                  "online degree", "textbooks", "driving school"),
    "gaming": ("game top-up", "skins", "battle pass", "gaming mouse", "console", "game gift card",
               "esports tickets", "new games"),
    "home": ("electricity bill", "water bill", "plumber", "sofa", "cleaning service", "apartment rent",
             "internet plan", "moving service"),
    "beauty": ("haircut", "lipstick", "facial", "manicure", "perfume", "skincare set", "massage",
               "hair coloring"),
}  # fmt: skip
# Templates shared by every category (slot: that category's products).
_SHARED_TEMPLATES: tuple[str, ...] = (
    "{product}",
    "cheap {product}",
    "best {product}",
    "{product} discount",
    "{product} reviews",
    "buy {product} online",
)
_CATEGORY_TEMPLATES: dict[str, tuple[str, ...]] = {
    "food": ("{product} delivery", "{product} near me", "best restaurants in {city}", "{city} street food",
             "{product} in {city}", "late night food", "lunch deals", "healthy dinner ideas",
             "{product} recipe", "food delivery coupon", "{city} food guide", "breakfast near me"),
    "transport": ("{product} price", "{city} metro map", "{city} airport to downtown", "{product} in {city}",
                  "taxi fare estimate", "ride hailing coupon", "traffic today", "{city} bus routes",
                  "monthly {product}", "nearest gas station", "{product} app", "parking near me"),
    "wealth": ("{product} returns", "{product} vs savings", "how to invest in {product}", "top {product} 2026",
               "{product} fees", "low risk investment", "compound interest calculator", "fund manager ranking",
               "{product} performance", "retirement savings plan", "market news today", "gold price today"),
    "insurance": ("{product} quote", "{product} for family", "compare {product}", "{product} claim process",
                  "{product} premium", "is {product} worth it", "insurance for parents", "{product} coverage",
                  "best insurer {city}", "insurance tax deduction", "renew {product}", "{product} for kids"),
    "travel": ("cheap flights to {city}", "hotels in {city}", "things to do in {city}", "{city} weather",
               "{product} to {city}", "{city} travel guide", "{product} deals", "weekend getaway ideas",
               "last minute {product}", "{city} itinerary 3 days", "visa on arrival countries",
               "{product} cancellation policy"),
    "shopping": ("{product} sale", "new {product} 2026", "{product} price comparison", "{product} in {city}",
                 "flash sale today", "free shipping {product}", "second hand {product}", "{product} gift idea",
                 "{product} size guide", "coupon code", "{product} best brand", "return policy"),
    "entertainment": ("{product} {city}", "{product} this weekend", "new movies this week", "top songs 2026",
                      "{product} discount code", "concerts in {city}", "trending shows", "{product} showtimes",
                      "funny videos", "{product} membership price", "best comics 2026", "what to watch tonight"),
    "health": ("{product} near me", "{product} price", "{product} in {city}", "headache remedy",
               "sleep better tips", "{product} appointment", "best hospital in {city}", "{product} side effects",
               "home workout", "calories in rice", "{product} reviews {city}", "flu symptoms"),
    "education": ("{product} online", "{product} fees", "{product} in {city}", "learn english fast",
                  "{product} schedule", "exam results", "best universities in {city}", "{product} for kids",
                  "free online courses", "{product} certificate", "study tips", "{product} books"),
    "gaming": ("{product} code", "{product} cheap", "new game release", "{product} event",
               "best mobile games", "{product} tips", "game walkthrough", "{product} gift",
               "esports schedule", "{product} bundle", "top gamers 2026", "free games"),
    "home": ("{product} payment", "{product} in {city}", "{product} price", "pay utility bills",
             "{product} near me", "apartments for rent in {city}", "home repair tips", "{product} booking",
             "furniture sale", "{product} schedule", "best {product} {city}", "energy saving tips"),
    "beauty": ("{product} near me", "{product} in {city}", "{product} price", "skincare routine",
               "{product} booking", "best salon in {city}", "makeup tutorial", "{product} for men",
               "{product} gift set", "hair trends 2026", "{product} deals", "spa day {city}"),
}  # fmt: skip


@dataclass(frozen=True)
class ItemCatalog:
    """One source's primary items: their names, categories and within-category popularity.

    Items are stored grouped by category (all `food` items first, ...). `zipf_cdf` is the concatenation, over
    categories, of `category_index + cumulative popularity`, so one `searchsorted` samples an item for
    many events of different categories at once.
    """

    field: str
    names: tuple[str, ...]
    categories: np.ndarray  # (n_items,) int category index, non-decreasing
    popularity: np.ndarray  # (n_items,) within-category probability, sums to 1 per category

    @cached_property
    def category_start(self) -> np.ndarray:
        """(n_categories + 1,) index of the first item of each category, then n_items."""
        return np.searchsorted(self.categories, np.arange(len(CATEGORIES) + 1)).astype(np.int64)

    @cached_property
    def category_size(self) -> np.ndarray:
        return np.diff(self.category_start)

    @cached_property
    def zipf_cdf(self) -> np.ndarray:
        cdf = np.empty(len(self.names))
        for c in range(len(CATEGORIES)):
            lo, hi = self.category_start[c], self.category_start[c + 1]
            cdf[lo:hi] = c + np.cumsum(self.popularity[lo:hi])
            cdf[hi - 1] = c + 1.0  # exact upper edge, whatever the rounding
        return cdf

    def sample(self, category: np.ndarray, u: np.ndarray, *, uniform: np.ndarray | None = None) -> np.ndarray:
        """Item index per event: Zipf-popular within `category`, or uniform where `uniform` is True.

        Args:
            category: (n,) category index per event.
            u: (n,) uniform draws in [0, 1).
            uniform: optional (n,) bool, events whose item is uniform within the category (noise).
        Returns:
            (n,) int64 item indices.
        """
        idx = np.searchsorted(self.zipf_cdf, category + u, side="right")
        if uniform is not None and uniform.any():
            flat = self.category_start[category] + (u * self.category_size[category]).astype(np.int64)
            idx = np.where(uniform, flat, idx)
        # searchsorted can land one past a category's end only at u == 1 - eps rounding; keep it inside.
        return np.minimum(idx, self.category_start[category + 1] - 1)

    @cached_property
    def index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.names)}


def _build(field: str, by_category: dict[str, list[str]]) -> ItemCatalog:
    """Group items by category and give them Zipf popularity in a fixed pseudo-random order."""
    rng = np.random.default_rng(_ORDER_SEED)
    names: list[str] = []
    cats: list[int] = []
    pops: list[np.ndarray] = []
    for c, category in enumerate(CATEGORIES):
        items = list(dict.fromkeys(by_category[category]))  # de-duplicate, keep order
        names.extend(items)
        cats.extend([c] * len(items))
        ranks = rng.permutation(len(items))
        weights = 1.0 / (ranks + 1.0) ** ZIPF_EXPONENT
        pops.append(weights / weights.sum())
    if len(set(names)) != len(names):
        raise AssertionError(f"catalog {field!r} has an item in two categories")
    return ItemCatalog(field, tuple(names), np.array(cats, dtype=np.int64), np.concatenate(pops))


def _queries(category: str) -> list[str]:
    out: list[str] = []
    for template in _SHARED_TEMPLATES + _CATEGORY_TEMPLATES[category]:
        products = PRODUCTS[category] if "{product}" in template else ("",)
        cities = CITIES if "{city}" in template else ("",)
        out.extend(template.format(product=p, city=c) for p in products for c in cities)
    return out


MERCHANTS = _build(
    "merchant", {c: [f"{s} {k}" for s in st for k in kinds] for c, (st, kinds) in _MERCHANT_PARTS.items()}
)
MINIPROGRAM_CATALOG = _build(
    "program", {c: [s + x for s in st for x in _MINIPROGRAM_SUFFIXES] for c, st in _MINIPROGRAM_STEMS.items()}
)
APPS = _build("app", {c: [s + x for s in st for x in _APP_SUFFIXES] for c, st in _APP_STEMS.items()})
PAGE_PATHS = _build(
    "path",
    {c: [f"home.{sec}.{p}.{a}" for p in pages for a in acts] for c, (sec, pages, acts) in _PAGE_SECTIONS.items()},
)
QUERIES = _build("query", {c: _queries(c) for c in CATEGORIES})

# The primary catalog of each sequence source (its item decides the event's category).
PRIMARY: dict[str, ItemCatalog] = {
    "bill": MERCHANTS,
    "miniprogram": MINIPROGRAM_CATALOG,
    "page_path": PAGE_PATHS,
    "app": APPS,
    "search": QUERIES,
}


def _weights_table(default: tuple[float, ...], overrides: dict[str, tuple[float, ...]]) -> np.ndarray:
    table = np.array([overrides.get(c, default) for c in CATEGORIES], dtype=np.float64)
    return table / table.sum(axis=1, keepdims=True)


# (n_categories, n_channels) and (n_categories, n_actions): the secondary field's distribution per category.
CHANNEL_PROBS = _weights_table(_CHANNEL_WEIGHTS_DEFAULT, _CHANNEL_WEIGHTS)
ACTION_PROBS = _weights_table(_ACTION_WEIGHTS_DEFAULT, {"wealth": (0.40, 0.25, 0.10, 0.15, 0.02, 0.08)})


def category_of(source: str, name: str) -> str | None:
    """Category of a primary item text of `source` (e.g. `category_of("miniprogram", "FundPlus")`).

    Returns None for a name not in the catalog (e.g. from another team's data).
    """
    catalog = PRIMARY[source]
    i = catalog.index.get(name)
    return None if i is None else CATEGORIES[int(catalog.categories[i])]
