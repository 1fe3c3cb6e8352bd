# The result lines compare.sh and profile.sh read (sourced by both): the PyTorch reference's row
# and one field of a `name=value` line (sd_step's, pytorch_step.py's). Needs $py, the venv's python.

field() { # field NAME LINE -> the number after NAME= (units stripped)
    sed -E "s/.*[ ]$1=([0-9.]+).*/\1/" <<<"$2"
}

pytorch_row() { # pytorch_row SIZE MODE ITERS -> pytorch_step.py's result line
    "$py" stages/fmn-sd/benches/pytorch_step.py --size "$1" --mode "$2" --iters "$3" 2>/dev/null | grep '^pytorch'
}
