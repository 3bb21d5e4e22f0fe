"""The COCO-MIG scorer (MIGC, CVPR 2024): GroundingDINO finds each instance, SAM segments it, HSV checks its colour.

The protocol is the benchmark's own ``eval_mig.py`` (LeyRio/MIG_Bench at 7f5da08; the rules and their sources
are listed in :mod:`.mig_metrics`). Confirmed there:

* models: GroundingDINO Swin-T OGC (``groundingdino_swint_ogc.pth``; its transformers conversion is
  ``IDEA-Research/grounding-dino-tiny``) and SAM ViT-H (``sam_vit_h_4b8939.pth``, ``facebook/sam-vit-huge``);
* the image is resized to 512 x 512 (``cv2.resize``: bilinear, no antialiasing) and the boxes scaled with it;
  :func:`resize_like_cv2` does the same through torch, within one grey level of OpenCV (checked offline
  against opencv-python-headless 5.1 on random images of several sizes);
* GroundingDINO is asked for the object name alone (the label "a red banana" without article and colour, so
  "banana"), as one class, with box and text thresholds 0.25, then NMS at 0.8;
* SAM gets the instance's layout box, multimask output, and the mask with the highest predicted IoU is used.

Not confirmed (the benchmark ran the original IDEA-Research and segment-anything code, this runs their
transformers ports): that the ports, with their own resizing to the models' input sizes, give the same boxes
and masks bit for bit. The caption is written "banana." as the original ``preprocess_caption`` makes it
(lower case, a final period).

Per instance: ``detected``, ``iou`` (best IoU of a detection with the layout box, 0 without one), ``miou`` (the
instance's term in the benchmark's mIoU), ``colour_fraction`` and ``colour_ok`` (None when the instance asks no
colour), ``found_colour`` (the table's colour covering most of the mask, not part of the benchmark) and
``success``. Per image: ``image_success`` (every instance right: the benchmark's per-image success ratio).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
import torch
from PIL import Image

from .items import BenchItem, Box, Instance
from .mig_metrics import (
    COLOUR_MIN_FRACTION,
    COLOUR_RANGES,
    COLOUR_SOURCE,
    IOU_THRESHOLD,
    NMS_THRESHOLD,
    best_match,
    colour_fraction,
    dominant_colour,
    masked_hsv,
    nms,
    verdict,
)
from .scoring import ImageScore, Value

DEFAULT_DETECTOR = "IDEA-Research/grounding-dino-tiny"
DEFAULT_SEGMENTER = "facebook/sam-vit-huge"
BOX_THRESHOLD = 0.25
TEXT_THRESHOLD = 0.25
EVAL_SIZE = 512


def detection_caption(instance: Instance) -> str:
    """The text GroundingDINO is given: the object name, lower case, ending in a period ("banana.")."""
    name = (instance.category or instance.prompt).strip().lower()
    return name if name.endswith(".") else name + "."


def resize_like_cv2(image: Image.Image, size: int) -> Image.Image:
    """`image` resized to `size` x `size` bilinearly without antialiasing, as ``cv2.resize`` does by default."""
    pixels = torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1)[None].float()
    resized = torch.nn.functional.interpolate(pixels, size=(size, size), mode="bilinear", align_corners=False)
    return Image.fromarray(resized[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy())


def scale_box(box: Box, sx: float, sy: float) -> Box:
    """`box` with x scaled by `sx` and y by `sy`."""
    return (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)


def instance_scores(
    instance: Instance,
    detections: list[Box],
    rgb: np.ndarray,
    mask: np.ndarray,
    iou_threshold: float = IOU_THRESHOLD,
    colour_min_fraction: float = COLOUR_MIN_FRACTION,
) -> dict[str, Value]:
    """One instance's scores from its detections (after NMS), the image as RGB and SAM's mask of its box.

    `instance.box` and `detections` are in the pixels of `rgb`.
    """
    _, iou = best_match(instance.box, detections)
    detected = bool(detections)
    hsv = masked_hsv(rgb, mask)
    fraction = colour_fraction(hsv, instance.colour) if instance.colour else None
    colour_ok = None if fraction is None else len(hsv) > 0 and fraction >= colour_min_fraction
    result = verdict(detected, iou, colour_ok, iou_threshold)
    return {
        "detected": detected,
        "iou": iou,
        "miou": result.miou,
        "colour_fraction": fraction,
        "colour_ok": colour_ok,
        "found_colour": dominant_colour(hsv),
        "success": result.success,
    }


class CocoMigScorer:
    """COCO-MIG's instance success and mIoU with GroundingDINO and SAM; models load on first use."""

    name = "coco-mig"

    def __init__(
        self,
        detector: str = DEFAULT_DETECTOR,
        segmenter: str = DEFAULT_SEGMENTER,
        device: str | torch.device = "cpu",
        box_threshold: float = BOX_THRESHOLD,
        text_threshold: float = TEXT_THRESHOLD,
        nms_threshold: float = NMS_THRESHOLD,
        iou_threshold: float = IOU_THRESHOLD,
        colour_min_fraction: float = COLOUR_MIN_FRACTION,
        eval_size: int | None = EVAL_SIZE,
    ) -> None:
        """`detector` and `segmenter` are hub ids or local folders; `eval_size` None scores at the image's size."""
        self.detector = detector
        self.segmenter = segmenter
        self.device = torch.device(device)
        self.box_threshold = box_threshold
        self.text_threshold = text_threshold
        self.nms_threshold = nms_threshold
        self.iou_threshold = iou_threshold
        self.colour_min_fraction = colour_min_fraction
        self.eval_size = eval_size
        self._models: dict[str, Any] = {}

    def describe(self) -> dict[str, Any]:
        """Model ids, thresholds and the colour rule, for results.json."""
        return {
            "name": self.name,
            "protocol": "COCO-MIG (MIGC, CVPR 2024), after LeyRio/MIG_Bench eval_mig.py @ 7f5da08",
            "detector": self.detector,
            "segmenter": self.segmenter,
            "box_threshold": self.box_threshold,
            "text_threshold": self.text_threshold,
            "nms_threshold": self.nms_threshold,
            "iou_threshold": self.iou_threshold,
            "colour_min_fraction": self.colour_min_fraction,
            "eval_size": self.eval_size,
            "eval_resize": "bilinear without antialiasing (cv2.resize's default)",
            "sam_prompt": "layout box",
            "colour_space": "OpenCV 8-bit HSV (H 0..180)",
            "colour_ranges": {colour: [list(map(list, r)) for r in ranges] for colour, ranges in COLOUR_RANGES.items()},
            "colour_source": COLOUR_SOURCE,
        }

    def score(self, image: Image.Image, item: BenchItem) -> ImageScore:
        """Detect, segment and colour-check every instance of `item` in `image`."""
        rgb_image = image.convert("RGB")
        sx = sy = 1.0
        if self.eval_size is not None:
            sx, sy = self.eval_size / rgb_image.width, self.eval_size / rgb_image.height
            rgb_image = resize_like_cv2(rgb_image, self.eval_size)
        instances = [replace(inst, box=scale_box(inst.box, sx, sy)) for inst in item.instances]
        rgb = np.asarray(rgb_image)
        masks = self._segment(rgb_image, [inst.box for inst in instances])
        captions = [detection_caption(inst) for inst in instances]
        detections = {caption: self._detect(rgb_image, caption) for caption in dict.fromkeys(captions)}  # once each
        rows = [
            instance_scores(inst, detections[caption], rgb, mask, self.iou_threshold, self.colour_min_fraction)
            for inst, caption, mask in zip(instances, captions, masks, strict=True)
        ]
        return ImageScore(instances=rows, image={"image_success": all(row["success"] for row in rows)})

    def _model(self, key: str) -> tuple[Any, Any]:
        """The (model, processor) for "detector" or "segmenter", loaded on first use onto the device."""
        if key not in self._models:
            from transformers import AutoProcessor, GroundingDinoForObjectDetection, SamModel

            source = self.detector if key == "detector" else self.segmenter
            model_class = GroundingDinoForObjectDetection if key == "detector" else SamModel
            model = model_class.from_pretrained(source).to(self.device).eval()
            self._models[key] = (model, AutoProcessor.from_pretrained(source))
        return self._models[key]

    @torch.no_grad()
    def _detect(self, image: Image.Image, caption: str) -> list[Box]:
        """GroundingDINO's boxes for `caption` above the box threshold, in image pixels, after NMS."""
        model, processor = self._model("detector")
        inputs = processor(images=image, text=caption, return_tensors="pt").to(self.device)
        outputs = model(**inputs)
        found = processor.post_process_grounded_object_detection(
            outputs, inputs["input_ids"], threshold=self.box_threshold, text_threshold=self.text_threshold,
            target_sizes=[(image.height, image.width)],
        )[0]
        boxes = [tuple(float(v) for v in box) for box in found["boxes"].cpu().tolist()]
        scores = found["scores"].cpu().tolist()
        return [boxes[i] for i in nms(boxes, scores, self.nms_threshold)]

    @torch.no_grad()
    def _segment(self, image: Image.Image, boxes: list[Box]) -> list[np.ndarray]:
        """SAM's best (highest predicted IoU) of its three masks for each box: (H, W) bool arrays."""
        if not boxes:
            return []
        model, processor = self._model("segmenter")
        inputs = processor(images=image, input_boxes=[[list(box) for box in boxes]], return_tensors="pt")
        inputs = inputs.to(self.device)
        outputs = model(pixel_values=inputs["pixel_values"], input_boxes=inputs["input_boxes"], multimask_output=True)
        masks = processor.post_process_masks(
            outputs.pred_masks.cpu(), inputs["original_sizes"].cpu(), inputs["reshaped_input_sizes"].cpu()
        )[0]  # (boxes, 3, H, W) bool
        best = outputs.iou_scores[0].argmax(dim=-1).cpu()  # (boxes,)
        return [masks[i, int(best[i])].numpy() for i in range(len(boxes))]
