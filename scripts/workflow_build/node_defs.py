"""One node's definition from /object_info: which inputs are widgets, their order, slots and outputs."""

from __future__ import annotations

from dataclasses import dataclass

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
FRONTEND_ONLY = {"Note", "MarkdownNote"}  # virtual nodes: not in /object_info, never in API graphs


def input_type(spec) -> str:
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def input_options(spec) -> dict:
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def is_widget(spec) -> bool:
    return input_type(spec) in WIDGET_TYPES and not input_options(spec).get("forceInput")


def has_control_widget(name: str, spec) -> bool:
    """Whether the frontend adds a 'control after generate' widget after this one: when the spec asks for it, and
    (frontend 1.35's useIntWidget) for any INT named seed or noise_seed that does not say otherwise."""
    opts = input_options(spec)
    return bool(opts.get("control_after_generate", input_type(spec) == "INT" and name in ("seed", "noise_seed")))


def combo_options(spec) -> list:
    return spec[0] if isinstance(spec[0], list) else input_options(spec).get("options", [])


@dataclass
class NodeDef:
    class_type: str
    info: dict

    def ordered_inputs(self) -> list[tuple[str, list, bool]]:
        """(name, spec, optional) in the frontend's order: input_order required, then optional."""
        out = []
        order = self.info.get("input_order") or {k: list(v) for k, v in self.info["input"].items()}
        for section in ("required", "optional"):
            specs = self.info["input"].get(section, {})
            for name in order.get(section, []):
                out.append((name, specs[name], section == "optional"))
        return out

    def widget_values(self, inputs: dict) -> list:
        """widgets_values as the v0.8.0 frontend (1.35) serializes them.

        One value per widget input, in `getOrderedInputSpecs` order (input_order required, then
        optional); a widget with a control widget (`has_control_widget`) is followed by its value ("fixed").
        An image_upload combo makes the Comfy.UploadImage extension add an `upload` input that is in
        no input_order, so it comes last; its button widget serializes as "image".
        """
        values, upload = [], False
        for name, spec, optional in self.ordered_inputs():
            if not is_widget(spec):
                continue
            values.append(inputs[name])
            if has_control_widget(name, spec):
                values.append("fixed")
            upload = upload or (not optional and bool(input_options(spec).get("image_upload")))
        if upload:
            values.append("image")
        return values

    def widget_count(self) -> int:
        n, upload = 0, False
        for name, spec, optional in self.ordered_inputs():
            if is_widget(spec):
                n += 1 + has_control_widget(name, spec)
                upload = upload or (not optional and bool(input_options(spec).get("image_upload")))
        return n + upload

    def slot_inputs(self) -> list[tuple[str, str, bool]]:
        return [(n, input_type(s), o) for n, s, o in self.ordered_inputs() if not is_widget(s)]

    def outputs(self) -> list[tuple[str, str]]:
        return list(zip(self.info["output_name"], self.info["output"], strict=True))
