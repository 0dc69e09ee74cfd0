# The two commands of the quick start. Both install what they need.
.PHONY: demo test
demo:
	./hack/demo.sh
test:
	./hack/test.sh
