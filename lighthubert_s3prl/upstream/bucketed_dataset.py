"""What s3prl's ``ctc`` recipe expects of a corpus: (audio path, token ids) items, served in length buckets."""
from __future__ import annotations

from pathlib import Path
from typing import List, Sequence, Tuple, Union

import torch

Item = Tuple[Path, List[int]]


class BucketedDataset(torch.utils.data.Dataset):
    """Items sorted by token count (longest first unless ``ascending``); with ``bucket_size`` > 1 each index
    gives that many neighbours, so a training batch holds transcripts of similar length, as the recipe's
    collate function expects (it takes one bucket per loader step)."""

    def __init__(self, files: Sequence[Path], tokens: Sequence[List[int]], bucket_size: int,
                 ascending: bool = False) -> None:
        order = sorted(range(len(files)), key=lambda i: len(tokens[i]), reverse=not ascending)
        self.file_list = [files[i] for i in order]
        self.text = [tokens[i] for i in order]
        self.bucket_size = bucket_size

    def __getitem__(self, index: int) -> Union[Item, List[Item]]:
        if self.bucket_size > 1:
            start = max(0, min(len(self.file_list) - self.bucket_size, index))
            end = start + self.bucket_size
            return list(zip(self.file_list[start:end], self.text[start:end]))
        return self.file_list[index], self.text[index]

    def __len__(self) -> int:
        return len(self.file_list)
