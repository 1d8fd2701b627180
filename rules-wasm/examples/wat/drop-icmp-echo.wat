;; Example policy in WAT (ABI v1): drop ICMP / ICMPv6 echo requests (ping) towards dataplane
;; port 3; every other packet gets Continue, so the next module decides.
;;
;; Memory: the I/O area at 1024 — 64 records of 48 bytes, then 64 verdicts of 8 bytes
;; (action u32, rule id u32). Record offsets used: protocol 37, out_port 42 (u16), icmp_type 44.
(module
  (memory (export "memory") 1 1)

  (func (export "bw_abi_version") (result i32) (i32.const 1))

  (func (export "bw_init") (result i32) (i32.const 1024))

  (func (export "bw_evaluate") (param $n i32)
    (local $i i32) (local $rec i32) (local $out i32) (local $proto i32) (local $type i32)
    ;; Never trust n beyond the area: clamp to 64.
    (if (i32.gt_u (local.get $n) (i32.const 64)) (then (local.set $n (i32.const 64))))
    (block $done
      (loop $next
        (br_if $done (i32.ge_u (local.get $i) (local.get $n)))
        (local.set $rec (i32.add (i32.const 1024) (i32.mul (local.get $i) (i32.const 48))))
        ;; verdict address: 1024 + 64*48 + i*8
        (local.set $out (i32.add (i32.const 4096) (i32.mul (local.get $i) (i32.const 8))))
        (local.set $proto (i32.load8_u offset=37 (local.get $rec)))
        (local.set $type (i32.load8_u offset=44 (local.get $rec)))
        (if (i32.and
              (i32.eq (i32.load16_u offset=42 (local.get $rec)) (i32.const 3))
              (i32.or
                (i32.and (i32.eq (local.get $proto) (i32.const 1)) (i32.eq (local.get $type) (i32.const 8)))
                (i32.and (i32.eq (local.get $proto) (i32.const 58)) (i32.eq (local.get $type) (i32.const 128)))))
          (then
            (i32.store (local.get $out) (i32.const 2))            ;; Drop
            (i32.store offset=4 (local.get $out) (i32.const 1)))  ;; rule 1
          (else
            (i32.store (local.get $out) (i32.const 0))            ;; Continue
            (i32.store offset=4 (local.get $out) (i32.const -1)))) ;; RULE_NONE
        (local.set $i (i32.add (local.get $i) (i32.const 1)))
        (br $next))))
)
