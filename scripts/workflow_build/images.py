"""Procedural reference images (workflows/inputs/*.png) and template-browser thumbnails, drawn with PIL."""

from __future__ import annotations

from .graph import Graph


def make_inputs() -> dict[str, "Image.Image"]:  # noqa: F821
    from PIL import Image, ImageDraw

    images = {}

    # Subject: a toy robot on white.
    im = Image.new("RGB", (384, 384), "white")
    d = ImageDraw.Draw(im)
    d.rectangle([182, 40, 202, 78], fill=(90, 90, 100))
    d.ellipse([176, 24, 208, 56], fill=(240, 200, 40))
    d.rounded_rectangle([122, 70, 262, 160], 24, fill=(210, 50, 45), outline=(120, 20, 20), width=4)
    d.ellipse([145, 95, 180, 130], fill="white", outline=(40, 40, 40), width=3)
    d.ellipse([204, 95, 239, 130], fill="white", outline=(40, 40, 40), width=3)
    d.ellipse([156, 106, 170, 120], fill=(20, 60, 160))
    d.ellipse([215, 106, 229, 120], fill=(20, 60, 160))
    d.rounded_rectangle([108, 168, 276, 300], 20, fill=(40, 110, 200), outline=(20, 50, 110), width=4)
    d.rectangle([160, 200, 224, 250], fill=(250, 220, 60))
    for x in (172, 192, 212):
        d.ellipse([x - 6, 216, x + 6, 228], fill=(200, 40, 40))
    d.rounded_rectangle([64, 178, 100, 280], 14, fill=(210, 50, 45))
    d.rounded_rectangle([284, 178, 320, 280], 14, fill=(210, 50, 45))
    d.rounded_rectangle([128, 304, 176, 360], 10, fill=(70, 70, 80))
    d.rounded_rectangle([208, 304, 256, 360], 10, fill=(70, 70, 80))
    images["refcustom_subject.png"] = im

    # Second subject: a teal mug with a pattern, on white.
    im = Image.new("RGB", (384, 384), "white")
    d = ImageDraw.Draw(im)
    d.ellipse([246, 140, 336, 260], outline=(20, 130, 130), width=18)
    d.rounded_rectangle([86, 100, 276, 320], 28, fill=(30, 160, 160), outline=(15, 90, 90), width=4)
    d.ellipse([86, 80, 276, 124], fill=(15, 100, 100), outline=(15, 90, 90), width=4)
    d.ellipse([98, 88, 264, 116], fill=(90, 50, 25))
    for i, y in enumerate(range(150, 300, 40)):
        for x in range(110 + (i % 2) * 20, 260, 40):
            d.ellipse([x, y, x + 16, y + 16], fill=(250, 240, 220))
    images["refcustom_subject2.png"] = im

    # Third subject: a potted plant, on white.
    im = Image.new("RGB", (384, 384), "white")
    d = ImageDraw.Draw(im)
    d.polygon([(122, 250), (262, 250), (242, 360), (142, 360)], fill=(200, 100, 50), outline=(120, 60, 30))
    d.rectangle([112, 236, 272, 256], fill=(180, 85, 40))
    d.line([(192, 240), (192, 120)], fill=(40, 110, 40), width=8)
    for cx, cy, w, h in [(140, 150, 90, 40), (244, 140, 90, 40), (150, 90, 80, 36), (232, 80, 84, 36),
                         (192, 46, 50, 70), (120, 206, 80, 34), (262, 204, 80, 34)]:
        d.ellipse([cx - w // 2, cy - h // 2, cx + w // 2, cy + h // 2], fill=(50, 160, 60), outline=(30, 100, 40),
                  width=3)
    images["refcustom_subject3.png"] = im

    # Face-like image: a centred cartoon face on a grey background (task id centre-crops it).
    im = Image.new("RGB", (384, 384), (135, 133, 132))
    d = ImageDraw.Draw(im)
    d.ellipse([92, 40, 292, 250], fill=(70, 45, 30))  # hair
    d.rectangle([162, 260, 222, 340], fill=(228, 184, 150))  # neck
    d.rectangle([80, 330, 304, 384], fill=(60, 80, 140))  # shoulders
    d.ellipse([112, 70, 272, 290], fill=(238, 196, 160), outline=(190, 140, 110), width=2)
    d.ellipse([100, 150, 124, 200], fill=(230, 186, 150))
    d.ellipse([260, 150, 284, 200], fill=(230, 186, 150))
    d.chord([104, 50, 280, 170], 180, 360, fill=(70, 45, 30))  # fringe
    for x in (152, 212):
        d.ellipse([x - 16, 160, x + 16, 180], fill="white")
        d.ellipse([x - 7, 163, x + 7, 177], fill=(70, 100, 60))
        d.ellipse([x - 3, 167, x + 3, 173], fill="black")
        d.line([(x - 18, 148), (x + 16, 144)], fill=(60, 40, 25), width=5)
    d.line([(192, 180), (184, 222), (198, 224)], fill=(180, 130, 100), width=3)
    d.arc([160, 226, 224, 260], 20, 160, fill=(170, 70, 70), width=6)
    images["refcustom_face.png"] = im

    # Garment: a striped t-shirt on white.
    im = Image.new("RGB", (384, 384), "white")
    d = ImageDraw.Draw(im)
    shirt = [(136, 48), (166, 40), (192, 66), (218, 40), (248, 48), (336, 104), (304, 164), (276, 148), (276, 344),
             (108, 344), (108, 148), (80, 164), (48, 104)]
    d.polygon(shirt, fill=(245, 245, 245), outline=(40, 40, 60))
    stripes = Image.new("L", (384, 384), 0)
    sd = ImageDraw.Draw(stripes)
    sd.polygon(shirt, fill=255)
    layer = Image.new("RGB", (384, 384), (30, 60, 150))
    mask = Image.new("L", (384, 384), 0)
    md = ImageDraw.Draw(mask)
    for y in range(70, 344, 36):
        md.rectangle([0, y, 384, y + 16], fill=255)
    im.paste(layer, (0, 0), Image.composite(mask, Image.new("L", (384, 384), 0), stripes))
    d.polygon(shirt, outline=(40, 40, 60))
    d.arc([164, 30, 220, 84], 0, 180, fill=(40, 40, 60), width=4)
    images["refcustom_garment.png"] = im

    # Person: a standing figure on white (portrait format).
    im = Image.new("RGB", (256, 384), "white")
    d = ImageDraw.Draw(im)
    d.ellipse([100, 18, 156, 80], fill=(226, 180, 146))
    d.chord([96, 12, 160, 64], 180, 360, fill=(40, 30, 25))
    d.rectangle([118, 78, 138, 92], fill=(226, 180, 146))
    d.rounded_rectangle([86, 90, 170, 210], 16, fill=(200, 200, 190))
    d.rounded_rectangle([62, 96, 86, 200], 10, fill=(200, 200, 190))
    d.rounded_rectangle([170, 96, 194, 200], 10, fill=(200, 200, 190))
    d.ellipse([62, 196, 86, 218], fill=(226, 180, 146))
    d.ellipse([170, 196, 194, 218], fill=(226, 180, 146))
    d.rectangle([90, 206, 126, 350], fill=(50, 60, 90))
    d.rectangle([130, 206, 166, 350], fill=(50, 60, 90))
    d.rounded_rectangle([84, 346, 128, 366], 8, fill=(30, 30, 30))
    d.rounded_rectangle([128, 346, 172, 366], 8, fill=(30, 30, 30))
    images["refcustom_person.png"] = im

    # Style: a colourful abstract pattern (concentric rings, stripes, dots).
    im = Image.new("RGB", (384, 384), (250, 235, 200))
    d = ImageDraw.Draw(im)
    palette = [(230, 57, 70), (241, 160, 40), (42, 157, 143), (38, 70, 83), (233, 196, 106), (120, 60, 160)]
    for i in range(0, 384 + 384, 32):
        d.line([(i, 0), (i - 384, 384)], fill=palette[(i // 32) % len(palette)], width=10)
    for k, (cx, cy) in enumerate([(96, 96), (288, 120), (150, 280), (310, 310)]):
        for r in range(90, 0, -15):
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=palette[(k + r // 15) % len(palette)],
                      outline=(20, 20, 20), width=2)
    for x in range(16, 384, 48):
        for y in range(16, 384, 48):
            d.ellipse([x - 5, y - 5, x + 5, y + 5], fill=(255, 255, 255), outline=(20, 20, 20))
    images["refcustom_style.png"] = im

    # AlignGen concept: an acoustic guitar on white (body, sound hole, bridge, neck, head, strings).
    im = Image.new("RGB", (384, 384), "white")
    d = ImageDraw.Draw(im)
    wood, dark = (196, 132, 62), (110, 62, 24)
    d.ellipse([96, 196, 288, 364], fill=wood, outline=dark, width=4)  # lower bout
    d.ellipse([120, 120, 264, 250], fill=wood, outline=dark, width=4)  # upper bout
    d.rectangle([130, 200, 254, 236], fill=wood)  # waist, hiding the inner outlines
    d.ellipse([164, 196, 220, 252], fill=(40, 25, 15), outline=dark, width=3)  # sound hole
    d.rectangle([160, 300, 224, 314], fill=(60, 35, 18))  # bridge
    d.rectangle([180, 26, 204, 200], fill=(95, 55, 25))  # neck
    for y in range(46, 196, 18):
        d.line([(180, y), (204, y)], fill=(210, 210, 210), width=2)  # frets
    d.rounded_rectangle([172, 4, 212, 40], 6, fill=(70, 40, 20))  # head
    for x in (178, 206):
        for y in (12, 22, 32):
            d.ellipse([x - 9 if x < 192 else x + 3, y - 3, x - 3 if x < 192 else x + 9, y + 3], fill=(200, 200, 200))
    for x in range(184, 202, 3):
        d.line([(x, 30), (x, 307)], fill=(235, 225, 200), width=1)  # strings
    images["refcustom_guitar.png"] = im
    return images


def wrap(text: str, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        if line and len(line) + len(word) + 1 > width:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}".strip()
    return lines + [line]


def make_thumbnail(g: Graph, inputs: dict) -> "Image.Image":  # noqa: F821
    """A 512x512 card: the reference images the workflow loads, its name and a one-line summary."""
    from PIL import Image, ImageDraw, ImageFont

    im = Image.new("RGB", (512, 512), (32, 36, 44))
    d = ImageDraw.Draw(im)
    refs = [n.inputs["image"] for n in g.nodes if n.class_type == "LoadImage"]
    tile = 200 if len(refs) <= 2 else 150
    gap = 16
    total = len(refs) * tile + (len(refs) - 1) * gap
    x = (512 - total) // 2
    for name in refs:
        src = inputs[name].copy()
        src.thumbnail((tile, tile))
        frame = Image.new("RGB", (tile, tile), (255, 255, 255))
        frame.paste(src, ((tile - src.width) // 2, (tile - src.height) // 2))
        im.paste(frame, (x, 70))
        x += tile + gap
    d.text((256, 30), g.name, fill=(255, 255, 255), anchor="mm", font=ImageFont.load_default(34))
    y = 70 + tile + 32
    for ln in wrap(g.description, 40):
        d.text((256, y), ln, fill=(230, 230, 230), anchor="mm", font=ImageFont.load_default(20))
        y += 28
    prompt = next(n.inputs["text"] for n in g.nodes
                  if n.class_type in ("RefCustom_DreamOTextEncode", "RefCustom_AlignGenConditioning", "CLIPTextEncode"))
    y += 10
    for ln in wrap(f'"{prompt}"', 48)[:4]:
        d.text((256, y), ln, fill=(150, 200, 150), anchor="mm", font=ImageFont.load_default(16))
        y += 22
    footer = {"kontext": "FLUX.1 Kontext", "syncd": "SynCD (FLUX.1-dev)",
              "aligngen": "AlignGen (FLUX.1-dev)"}.get(g.name.split("_")[0], "DreamO (FLUX.1-dev)")
    d.text((256, 490), "refcustom / " + footer, fill=(140, 150, 170), anchor="mm",
           font=ImageFont.load_default(18))
    return im
